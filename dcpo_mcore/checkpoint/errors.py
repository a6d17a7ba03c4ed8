"""The one error of the checkpoint room.

A :class:`CheckpointError` message is one line: the path, what is wrong with it, and what to do
(docs/architecture.md [conv-one-line-errors]), because the person reading it is restarting a job at 3 a.m.
"""
from __future__ import annotations

from dcpo_mcore.errors import UserError


class CheckpointError(UserError):
    """A checkpoint cannot be written or loaded (corrupt, incomplete, missing or mismatched)."""
