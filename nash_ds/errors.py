"""The exceptions nash-ds raises on purpose, and the exit code each one ends a run with.

- ``ValueError`` (and its subclass ``UserError``): bad input, exit 2, one ``nash-ds: error:`` line;
- ``SelfCheckError``: the pruned model does not compute what the masked model computed, exit 3;
- ``RankFailedError``: another rank failed (its message follows), exit 3;
- ``Preempted``: a stop signal (SIGUSR1 / SIGTERM) was honoured, exit 75 so Slurm requeues.

Nothing here imports the rest of the project.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
"""Bad input: what is wrong and what would be right is in the message."""
EXIT_FAILED = 3
"""A check failed (self-check) or another rank failed."""
EXIT_PREEMPTED = 75
"""A stop signal was honoured: state saved (or nothing published), please requeue (EX_TEMPFAIL)."""


class UserError(ValueError):
    """Bad input found by nash-ds itself (any ValueError is treated the same way)."""


class SelfCheckError(RuntimeError):
    """The pruned model does not compute what the masked model computed; nothing was published."""


class RankFailedError(RuntimeError):
    """Raised on every rank that did not fail itself when another rank failed."""


class Preempted(Exception):  # noqa: N818 - a signal, not an error
    """A stop signal arrived; the stage stopped cleanly at a safe point."""
