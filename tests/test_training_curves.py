"""Training curves: the scalars the loop logs come back from the event files, and the figure
draws one line per contrast and stage on a common step axis."""

import numpy as np
from clu import metric_writers

from qsnet_jax import figures

CONTRASTS = ("t1w", "t2w")


def write_stage(log_dir, first_value):
    writer = metric_writers.create_default_writer(log_dir)
    for step in (10, 20, 30):
        writer.write_scalars(step, {"train/l1": first_value / step,
                                    "val/t1w/mae": 5.0 - step / 10, "val/t2w/mae": 4.0,
                                    "val/t1w/psnr": 20 + step / 10, "val/t2w/psnr": 25.0})
    writer.flush()
    writer.close()


def test_read_scalars_returns_what_the_writer_logged(tmp_path):
    write_stage(str(tmp_path / "pretrain"), 1.0)
    scalars = figures.read_scalars(str(tmp_path / "pretrain"))
    assert [s for s, _ in scalars["train/l1"]] == [10, 20, 30]
    np.testing.assert_allclose([v for _, v in scalars["train/l1"]], [0.1, 0.05, 1 / 30],
                               rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["val/t1w/mae"]], [4.0, 3.0, 2.0],
                               rtol=1e-6)
    assert figures.read_scalars(str(tmp_path / "nothing_here")) == {}


def test_curves_put_the_stages_one_after_the_other(tmp_path):
    write_stage(str(tmp_path / "pretrain"), 1.0)
    write_stage(str(tmp_path / "finetune"), 0.5)
    scalars = {stage: figures.read_scalars(str(tmp_path / stage))
               for stage in ("pretrain", "finetune")}
    fig = figures.training_curves_figure(scalars, contrast_names=CONTRASTS, title="run")
    loss_axis, mae_axis, psnr_axis = fig.axes
    curves = lambda ax: [line for line in ax.lines if len(line.get_xdata()) == 3]
    # one line per stage on the loss panel, one per contrast and stage on the others (and
    # the dotted stage boundary)
    assert len(curves(loss_axis)) == 2 and len(curves(mae_axis)) == 4
    assert len(mae_axis.lines) == 5
    finetune_t1w = curves(mae_axis)[2]
    np.testing.assert_array_equal(finetune_t1w.get_xdata(), [40, 50, 60])  # after step 30
    np.testing.assert_allclose(finetune_t1w.get_ydata(), [4.0, 3.0, 2.0], rtol=1e-6)
    assert [t.get_text() for t in mae_axis.get_legend().get_texts()] == ["T1w", "T2w"]
    assert len(figures.png_bytes(fig)) > 1000


def test_a_run_of_a_few_steps_still_draws_its_one_interval_and_lays_out():
    """Two steps logged once: the single L1 point gets a marker (a line of one point is
    invisible), and the stage label at step 0, outside the axis, does not collapse the
    constrained layout (matplotlib warns when it does)."""
    import warnings

    scalars = {"pretrain": {"train/l1": [(2, 0.4)], "val/t1w/mae": [(2, 25.0)],
                            "val/t1w/psnr": [(2, 11.0)]}}
    fig = figures.training_curves_figure(scalars, contrast_names=("t1w",))
    assert [line.get_marker() for line in fig.axes[0].lines] == ["."]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures.png_bytes(fig)
    assert not [w for w in caught if "constrained_layout" in str(w.message)]
    # no training interval logged at all: said in the panel, which stays linear
    del scalars["pretrain"]["train/l1"]
    fig = figures.training_curves_figure(scalars, contrast_names=("t1w",))
    assert fig.axes[0].get_yscale() == "linear"
    assert "no training interval logged" in [t.get_text() for t in fig.axes[0].texts]
