"""What the entry points share: a user error is one line on stderr and exit code 2. The work
is in `workflow`; an entry point parses flags, calls one function there through `run`."""

from __future__ import annotations

import argparse
import os
import sys

from absl import flags

from workflow.errors import UserError


def fail(message: str, code: int = 2):
    """Print one clear line and exit (2 = bad input, the convention of every CLI here)."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "qsnet"
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def run(function, *args, **kwargs):
    """`function(*args, **kwargs)`, with a UserError as one line and exit code 2."""
    try:
        return function(*args, **kwargs)
    except UserError as error:
        fail(str(error))


def config_flags_parser(argv):
    """An absl flags parser that turns flag and config-override errors into one line."""
    try:
        return flags.FLAGS(argv)
    except (KeyError, AttributeError) as error:
        # ConfigDict reports a missing key as AttributeError("'key'") (with did-you-mean)
        _fail_unknown_key(error)
    except flags.Error as error:
        cause = error.__cause__ or error.__context__
        if isinstance(cause, KeyError):
            _fail_unknown_key(cause)
        fail(_config_file_error(str(error)))
    except (ValueError, TypeError) as error:
        fail(f"bad --config override: {_first_line(str(error))}")


def load_config(flag_values, argv, name="config"):
    """The config of a config_flags flag, a missing or broken file as one line."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = getattr(flag_values, name)
        config.to_dict()  # a config file that failed to load raises here
        return config
    except Exception as error:  # noqa: BLE001 (any import error of the config file)
        path = flag_values[name].config_filename.split(":")[0]
        if not os.path.isfile(path):
            fail(f"config file not found: {path}")
        fail(f"cannot load config file {path}: {type(error).__name__}: "
             f"{_first_line(str(error))}")


def default_workdir(flag_values, name="config") -> str:
    """runs/<config name>: configs/finetune.py -> runs/finetune, compare.py:quick ->
    runs/compare_quick."""
    path, _, size = flag_values[name].config_filename.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{stem}_{size}" if size else stem)


def _fail_unknown_key(error):
    keys = [a.split("=")[0][len("--"):] for a in sys.argv[1:] if a.startswith("--config.")]
    named = [k for k in keys if repr(k.split(".")[-1]) in repr(str(error))]
    fail(f"unknown config key {(named or keys or ['config'])[0]!r} "
         "(every key and its default is in configs/default.py)")


def _config_file_error(text: str) -> str:
    """A config file that raised while loading (a bad size, say) comes as a traceback: its
    first line names the flag, its last line the exception; keep those two."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and "Error whilst parsing config file" in lines[0]:
        flag = lines[0].split(": Error whilst parsing")[0]
        return f"{flag}: {lines[-1].split(': ', 1)[-1]}"
    return _first_line(text)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "invalid arguments"


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit code 2, like every CLI here."""

    def error(self, message):
        fail(message)
