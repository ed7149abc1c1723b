"""Atomic files and staged output folders: the one way anything in this project writes.

A reader never sees half a file or half a folder, and a failure leaves nothing behind:

    write_text(path, text)             # a text file, through a temporary name
    write_bytes(path, data)            # the same for bytes (a PNG)
    write_json(path, value)            # the same, as indented JSON
    with staged_file(path) as tmp: ... # any writer (nibabel, matplotlib) into a temporary name
    with staged_dir(out_dir, overwrite=False) as tmp: ...
        # a whole folder built in a sibling temporary folder, renamed into place at the end

Several processes may race to publish the same folder (a cached phantom cohort, say): with
`if_exists="keep"` the first one to finish wins and the others discard their copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def staged_file(path: str) -> Iterator[str]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically, on
    an exception it is removed and `path` is untouched. Missing parent folders are created."""
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Keep the file's extension last, so writers that dispatch on it (nibabel, savefig) work.
    base, ext = _split_extension(os.path.basename(path))
    tmp = os.path.join(os.path.dirname(path), f".{base}.tmp-{os.getpid()}{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _split_extension(name: str) -> tuple[str, str]:
    for ext in (".nii.gz", ".tar.gz"):
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return os.path.splitext(name)


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically (parents created)."""
    with staged_file(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` (a PNG, say) to `path` atomically (parents created)."""
    with staged_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json(path: str, value) -> None:
    """Write `value` as indented JSON atomically; numpy scalars become floats."""
    write_text(path, json.dumps(value, indent=2, default=float) + "\n")


def is_non_empty(path: str) -> bool:
    """True for a folder with entries, or for any existing non-folder."""
    if os.path.isdir(path):
        return bool(os.listdir(path))
    return os.path.exists(path)


@contextlib.contextmanager
def staged_dir(out_dir: str, *, if_exists: str = "error") -> Iterator[str]:
    """Build a folder in a temporary sibling and move it to `out_dir` when the block ends.

    if_exists: what to do when `out_dir` already holds something when the block *starts*
    ("error": FileExistsError, before any work) and when it is published:
      - "error":   refuse (FileExistsError); nothing is replaced,
      - "replace": the old folder is swapped out and deleted only after the new one is in place,
      - "keep":    the existing folder wins (a racing process built it); ours is discarded.
    On an exception the temporary folder is removed and `out_dir` is untouched.
    """
    if if_exists not in ("error", "replace", "keep"):
        raise ValueError(f"if_exists must be error, replace or keep, not {if_exists!r}")
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    if if_exists == "error" and is_non_empty(out_dir):
        raise FileExistsError(f"{out_dir}: exists and is not empty")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _publish(tmp, out_dir, if_exists)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: str, out_dir: str, if_exists: str) -> None:
    if not os.path.lexists(out_dir) or (os.path.isdir(out_dir) and not os.listdir(out_dir)):
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)
        try:
            os.rename(tmp, out_dir)
            return
        except OSError:
            if not is_non_empty(out_dir):
                raise  # a real failure, not a lost race
    if if_exists == "keep":
        shutil.rmtree(tmp, ignore_errors=True)
    elif if_exists == "error":
        raise FileExistsError(f"{out_dir}: appeared while it was being built; not replaced")
    else:
        trash = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-",
                                 dir=os.path.dirname(out_dir))
        os.rename(out_dir, os.path.join(trash, "old"))
        os.rename(tmp, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
