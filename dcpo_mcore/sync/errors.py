"""One-line errors of the weight sync."""
from __future__ import annotations

from dcpo_mcore.errors import UserError


class SyncError(UserError, RuntimeError):
    """A weight sync that failed (after its retries) or a verification that found a wrong engine.

    The message is one line: what failed, on which server, and what to do. Training must not continue
    against an engine whose weights are unknown (SGLang keeps half-updated weights after a failure).
    """
