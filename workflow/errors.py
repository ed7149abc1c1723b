"""The one error type the entry points translate: bad input from the person at the keyboard.

Library code raises its own exceptions (a registry's ValueError, a cohort's CohortError);
the workflow turns the ones a person can fix into a `UserError` with one clear line, and
`experiments.cli` prints that line and exits with code 2.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


def one_line(text) -> str:
    """A multi-problem message (one problem per line) joined into one line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(lines)
