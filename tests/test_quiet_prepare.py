"""Preparing a local cohort for TFDS says what it does in one line of its own, and nothing
about downloading (TFDS's "Downloading and preparing dataset" is wrong for local files)."""

from data_pipelines import tfds_builder


def test_prepare_prints_no_download_line(tiny_cohort, tmp_path, capfd):
    capfd.readouterr()
    builder = tfds_builder.prepare_cohort(tiny_cohort, data_dir=str(tmp_path / "tfds"))
    out, err = capfd.readouterr()
    assert builder.is_prepared()
    assert "Downloading" not in out + err and "download" not in (out + err).lower()
    assert out == ""  # stdout stays the caller's
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("preparing the TFDS data of "), err
    # a second call reuses the prepared data and says nothing
    tfds_builder.prepare_cohort(tiny_cohort, data_dir=str(tmp_path / "tfds"))
    assert capfd.readouterr() == ("", "")
