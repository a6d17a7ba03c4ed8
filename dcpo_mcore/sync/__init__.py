"""Weight sync: megatron shards -> HF names -> flattened buckets -> broadcast -> SGLang (docs/architecture.md [data-flow]).

* :class:`WeightSync` / :class:`SyncSettings` (weight_sync.py): ``push(version)`` and ``verify()``,
  collectives over the trainer's ranks; rank 0 drives the servers.
* group.py: the trainer's end of SGLang's weight-update group (TCPStore + PrefixStore, no sglang import).
* buckets.py: the ``flattened_bucket`` byte layout and the reused bucket buffers (``BufferPool``);
  sender.py: the broadcast thread with HTTP in threads.
* liveness.py: one parallel ``/model_info`` probe per worker (alive + weight_version; ``/health`` as fallback).
* verify.py: trainer vs server log-probs on fixed sequences.
"""
from .buckets import Bucket, BucketPacker, BufferPool, dtype_name
from .errors import SyncError
from .weight_sync import SyncSettings, WeightSync, settings_from_config

__all__ = ["Bucket", "BucketPacker", "BufferPool", "SyncError", "SyncSettings", "WeightSync", "dtype_name", "settings_from_config"]
