"""A torch_dist checkpoint moves between a model with Transformer Engine's ``_extra_state`` entries and
one without (the local spec), both ways, through every loader (docs/gpu.md [ckpt-keys]; worker:
tests/dist/spec_keys_worker.py). Before, megatron refused the load in either direction."""
import pytest

from tests.dist.launcher import launch

pytestmark = pytest.mark.dist


def test_checkpoints_cross_between_modules_with_and_without_extra_state(tmp_path):
    res = launch("tests.dist.spec_keys_worker:both_ways", world_size=2, args=(str(tmp_path),), timeout_s=300)
    for r in res:
        assert r["extra_key_saved"], "the stand-in for a TE norm has no _extra_state: the test would prove nothing"
        assert r == {"extra_key_saved": True, "plain_into_extra": True, "kept_own_extra_state": True,
                     "extra_into_plain": True, "weights_only": True, "conversion_load": True,
                     "extra_state_loaded": True}, r
