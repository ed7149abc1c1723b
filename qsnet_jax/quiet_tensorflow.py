"""TensorFlow's first import without its start-up notices.

TensorFlow 2.21 writes, from C++ and before its logging reads TF_CPP_MIN_LOG_LEVEL, two
notices per process to the stderr file descriptor: that absl logs go to stderr, and that
"oneDNN custom operations are on". The project uses TensorFlow only to feed data (tf.data,
TFDS) and through clu's metric writers, so those lines say nothing to a user, and they
would stand in front of the one line a bad input is answered with.

`install()` (called by ``qsnet_jax/__init__.py``) puts a finder at the head of
``sys.meta_path`` that, on the first ``import tensorflow`` of the process (from anywhere:
the project, clu, TFDS), runs TensorFlow's own module code with file descriptor 2
captured, then writes back every captured line except those notices. The finder removes
itself when that code runs; a process that imported TensorFlow before is left alone.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Callable

# The notices dropped, and nothing else: any other line (a warning, an error) is written back.
NOTICES = re.compile(r"All log messages before absl::InitializeLog\(\) is called are written "
                     r"to STDERR|port\.cc:\d+\] oneDNN custom operations are on")


@contextlib.contextmanager
def stderr_without(drop: Callable[[str], bool]):
    """Capture file descriptor 2 (C++ and Python writes alike) for the block, then write back
    the captured lines for which ``drop(line)`` is false. Where descriptor 2 cannot be
    duplicated (closed), the block runs uncaptured."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not drop(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietFirstImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: hands the import of ``tensorflow`` to the finders after it, with
    that module's execution wrapped in `stderr_without(NOTICES)`. It stays in place until
    TensorFlow's module code runs, so a mere availability check (``find_spec``) does not
    use it up."""

    def __init__(self):
        self._searching = False

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow" or self._searching:
            return None
        self._searching = True  # the search below asks this finder again
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._searching = False
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        plain = loader.exec_module

        def exec_module(module):
            uninstall()
            del loader.exec_module  # the loader's own method again, after this one call
            with stderr_without(lambda line: NOTICES.search(line) is not None):
                plain(module)

        loader.exec_module = exec_module
        return spec


_FINDER = _QuietFirstImport()


def install() -> None:
    """Quiet this process's first TensorFlow import (no-op once TensorFlow is imported)."""
    if "tensorflow" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_FINDER)
