"""Shared plumbing of the command-line entry points: quiet TensorFlow, one-line errors."""

from __future__ import annotations

import argparse
import os
import sys


class UserError(Exception):
    """Bad input from the person at the keyboard: printed as one line, exit code 2."""


def quiet_tensorflow():
    """Silence TF's start-up chatter and keep it off any GPU (it only feeds data)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf  # noqa: PLC0415 (import after the environment is set)

    tf.config.set_visible_devices([], "GPU")
    tf.get_logger().setLevel("ERROR")


def fail(message: str, code: int = 2):
    """Print one clear line and exit (2 = bad input, the convention of every CLI here)."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "qsnet"
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def config_flags_parser(argv):
    """An absl flags parser that turns flag and config-override errors into one line."""
    from absl import flags  # noqa: PLC0415

    try:
        return flags.FLAGS(argv)
    except KeyError as error:
        _fail_unknown_key(error)
    except flags.Error as error:
        cause = error.__cause__ or error.__context__
        if isinstance(cause, KeyError):
            _fail_unknown_key(cause)
        fail(_first_line(str(error)))
    except AttributeError as error:
        # ConfigDict reports a missing key as AttributeError("'key'") (with did-you-mean)
        _fail_unknown_key(KeyError(str(error).strip("'\"")))
    except (ValueError, TypeError) as error:
        fail(f"bad --config override: {_first_line(str(error))}")


def load_config_flag(flag_values, name="config"):
    """Read a config_flags flag, turning a missing or broken config file into one line."""
    try:
        config = getattr(flag_values, name)
        config.to_dict()  # a config file that failed to load raises here
        return config
    except Exception as error:  # noqa: BLE001 (any import error of the config file)
        path = flag_values[name].config_filename
        if not os.path.isfile(path):
            fail(f"config file not found: {path}")
        fail(f"cannot load config file {path}: {type(error).__name__}: "
             f"{_first_line(str(error))}")


def _fail_unknown_key(error: KeyError):
    key = str(error.args[0] if error.args else error).strip("'\"")
    override = next((a for a in sys.argv[1:] if a.startswith("--config.")), "")
    if override:
        key = override.split("=")[0][len("--"):]
    fail(f"unknown config key {key!r} "
         "(every key and its default is in configs/default.py)")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "invalid arguments"


def config_job_main(flag_values, load_job):
    """The `main(argv)` of an entry point driven by --config and --workdir.

    `load_job()` imports and returns the job function `(config, workdir)`; it is called only
    after TensorFlow is silenced, so the heavy imports stay quiet.
    """

    def main(argv):
        if len(argv) > 1:
            fail(f"unexpected arguments: {' '.join(argv[1:])}")
        config = load_config_flag(flag_values)
        quiet_tensorflow()
        try:
            load_job()(config, flag_values.workdir)
        except UserError as error:
            fail(str(error))

    return main


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit code 2, like every CLI here."""

    def error(self, message):
        fail(message)


def write_atomic(path: str, text: str):
    """Write `text` to `path` through a temporary name, so a reader never sees half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
