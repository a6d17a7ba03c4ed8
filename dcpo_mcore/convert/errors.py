"""The two ways a conversion ends badly, each with its own exit code.

* :class:`ConvertError` (exit 2): the input cannot be converted -- bad arguments, missing files, an
  unsupported architecture, a TP/PP that does not fit the model, a corrupt or incomplete checkpoint.
* :class:`VerifyError` (exit 1): the conversion ran but a self-check failed (a tensor is not
  byte-identical after the round trip, or Megatron and HF log-probs differ beyond the tolerance).

Messages are one line, say what is wrong and, where it helps, what to do.
"""
from __future__ import annotations

from dcpo_mcore.errors import UserError

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class ConvertError(UserError):
    """Bad input (arguments, files, architecture, checkpoint); exit code 2."""

    exit_code = EXIT_BAD_INPUT


class VerifyError(UserError):
    """A self-check (--verify, --check-logprobs) failed; exit code 1."""

    exit_code = EXIT_VERIFY_FAILED


class RankCrash(Exception):
    """A rank died unexpectedly, hung past the timeout, or hit a bug; exit code 3 (logs are kept)."""

    exit_code = 3
