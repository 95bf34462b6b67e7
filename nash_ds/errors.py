"""The exceptions nash-ds raises on purpose, and the exit code each one ends a run with.

- ``UserError``: bad input (a config value, a missing file, an unreachable target), raised where the input is
  checked; exit 2, one ``nash-ds: error:`` line (the config loader's own ``ValueError`` ends the same way);
- ``SelfCheckError``: the pruned model does not compute what the masked model computed, exit 3;
- ``RankFailedError``: another rank failed (its message follows), exit 3;
- ``Preempted``: a stop signal (SIGUSR1 / SIGTERM) was honoured, exit 75 so Slurm requeues;
- anything else (a ``ValueError`` inside torch, transformers or DeepSpeed included) is a bug, ours or theirs:
  exit 1, its traceback and ``nash-ds: internal error in <stage>``.

Nothing here imports the rest of the project.
"""

from __future__ import annotations

EXIT_INTERNAL_ERROR = 1
"""A bug (ours or a library's): the traceback shows where; please report it."""
EXIT_USER_ERROR = 2
"""Bad input: what is wrong and what would be right is in the message."""
EXIT_FAILED = 3
"""A check failed (self-check) or another rank failed."""
EXIT_PREEMPTED = 75
"""A stop signal was honoured: state saved (or nothing published), please requeue (EX_TEMPFAIL)."""


class UserError(ValueError):
    """Bad input found by nash-ds itself, where it checks that input. A ``ValueError`` for ``except ValueError``
    callers; only this class (not every ``ValueError``) ends a run with exit 2 and one line."""


class SelfCheckError(RuntimeError):
    """The pruned model does not compute what the masked model computed; nothing was published."""


class RankFailedError(RuntimeError):
    """Raised on every rank that did not fail itself when another rank failed."""


class Preempted(Exception):  # noqa: N818 - a signal, not an error
    """A stop signal arrived; the stage stopped cleanly at a safe point."""
