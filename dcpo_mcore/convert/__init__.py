"""Checkpoint conversion between Hugging Face safetensors and megatron-core torch_dist checkpoints.

CLI: ``dcpo-convert hf-to-mcore | mcore-to-hf | check-logprobs`` (:mod:`dcpo_mcore.cli.convert`). Python
API: :mod:`.api` (``hf_to_mcore``, ``mcore_to_hf``, ``check_checkpoint_logprobs``). Checkpoint layout and metadata:
:mod:`.ckpt_meta`. Rank-side megatron steps (build, load/save, export streaming, forward log-probs),
reusable by the trainer to load a converted checkpoint at any layout: :mod:`.rank_ops`.

Kept import-light on purpose: the rank entry point ``python -m dcpo_mcore.convert.worker`` imports this
package, and dist_checkpointing's save re-imports that entry point in a spawned helper process.
"""
