"""Turn chat messages into the prompt text and token ids the policy is trained on.

Two modes (config ``data.chat_template``):

* ``tokenizer`` -- ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``,
  as the DCPO/verl recipe does: the assistant turn is opened and the model continues after it.
* ``none`` -- the message contents joined with "\\n", no roles, no special tokens. For base models
  and the CPU demo's tiny model, whose prompt is just the question.

Token ids are ``tokenizer(text, add_special_tokens=False)["input_ids"]``. The rendered text already
holds every special token the template wants (a BOS, ``<|im_start|>``, ...); letting the tokenizer add
its own would put a second BOS in front for Llama-style tokenizers. This is what verl does, and the
rollout must be given these ids (not the text) so SGLang and the trainer see identical prompt tokens.
"""
from __future__ import annotations

from typing import Any, Sequence

from .records import DataError

__all__ = ["CHAT_TEMPLATE_MODES", "TemplateRenderError", "check_chat_template", "encode_prompts", "render_prompt"]

CHAT_TEMPLATE_MODES = ("tokenizer", "none")


class TemplateRenderError(DataError):
    """The tokenizer's chat template failed on these particular messages (a row problem, not a config one)."""


def check_chat_template(tokenizer: Any, mode: str) -> None:
    """Fail before reading any file when ``mode`` cannot work with this tokenizer."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise DataError(f"unknown chat_template mode {mode!r}; set data.chat_template to one of "
                        f"{', '.join(CHAT_TEMPLATE_MODES)}")
    if mode == "tokenizer" and not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(f"tokenizer {name!r} has no chat template; set data.chat_template=none to feed the "
                        "raw message text, or use a tokenizer that ships one (tokenizer_config.json chat_template)")


def render_prompt(tokenizer: Any, messages: Sequence[dict], mode: str) -> str:
    """The prompt text for ``messages`` under ``mode`` ("tokenizer" or "none", see the module docstring)."""
    check_chat_template(tokenizer, mode)
    if mode == "none":
        return "\n".join(m["content"] for m in messages)
    try:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja raises TemplateError / TypeError / ... for messages it refuses
        raise TemplateRenderError(f"the chat template cannot render these messages "
                                  f"({type(exc).__name__}: {exc}); fix the messages or set "
                                  "data.chat_template=none") from exc
    if not isinstance(text, str):  # some tokenizers return a list for batched input
        raise TemplateRenderError(f"apply_chat_template returned {type(text).__name__}, not str; "
                                  "set data.chat_template=none or use a standard HF tokenizer")
    return text


def encode_prompts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without added special tokens (one batched call: fast tokenizers
    parallelise it, which matters for tens of thousands of training prompts)."""
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [list(x) for x in ids]
