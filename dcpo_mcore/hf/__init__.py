"""Hugging Face side helpers that need no megatron: tiny local models and tokenizers for tests and
the CPU demo (:mod:`dcpo_mcore.hf.tiny`)."""
