"""The flattened-bucket layout SGLang expects (platform_notes.md §2) and the checks before sending."""
import pytest
import torch

from dcpo_mcore.sync.buckets import Bucket, BucketPacker, dtype_name, unpack, validate_bucket
from dcpo_mcore.sync.group import reachable_address


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16),
            "c": torch.randn(2, 2, 2, generator=g), "d": torch.randn(40, generator=g)}


def test_packing_is_the_concatenation_of_flat_byte_views_in_name_order():
    out = []
    packer = BucketPacker(bucket_bytes=1 << 20, emit=out.append)
    ts = _tensors()
    for n, t in ts.items():
        packer.add(n, t)
    packer.flush()
    assert len(out) == 1 and out[0].names == list(ts)
    expected = torch.cat([t.reshape(-1).view(torch.uint8) for t in ts.values()])
    assert torch.equal(out[0].data, expected)
    assert out[0].dtypes == ["float32", "bfloat16", "float32", "float32"]
    assert out[0].shapes == [[3, 5], [7], [2, 2, 2], [40]]
    back = unpack(out[0])
    assert all(torch.equal(back[n], t) for n, t in ts.items())


def test_bucket_boundaries_respect_the_size_and_a_big_tensor_travels_alone():
    out = []
    # a=60 B, b=14 B, c=32 B, d=160 B with a 100-byte cap: [a, b], [c], [d]
    packer = BucketPacker(bucket_bytes=100, emit=out.append)
    for n, t in _tensors().items():
        packer.add(n, t)
    packer.flush()
    assert [b.names for b in out] == [["a", "b"], ["c"], ["d"]]
    assert [b.index for b in out] == [0, 1, 2]
    assert packer.total_bytes == 60 + 14 + 32 + 160 == sum(b.nbytes for b in out)


def test_packer_casts_to_the_wire_dtype():
    out = []
    packer = BucketPacker(bucket_bytes=1 << 20, emit=out.append, dtype=torch.bfloat16)
    packer.add("a", torch.ones(4))
    packer.flush()
    assert out[0].dtypes == ["bfloat16"] and out[0].nbytes == 8
    assert torch.equal(unpack(out[0])["a"], torch.ones(4, dtype=torch.bfloat16))


@pytest.mark.parametrize("bucket, expected_shapes, message", [
    (Bucket(0, ["w"], ["int64"], [[2]], torch.zeros(16, dtype=torch.uint8)), None, "w has dtype int64"),
    (Bucket(1, ["w"], ["float32"], [[3]], torch.zeros(12, dtype=torch.uint8)), {"w": (2,)},
     "bucket 1: w has shape [3] but the model's is [2]"),
    (Bucket(2, ["x"], ["float32"], [[2]], torch.zeros(8, dtype=torch.uint8)), {"w": (2,)}, "x is not a tensor"),
    (Bucket(3, ["w"], ["float32"], [[2]], torch.zeros(7, dtype=torch.uint8)), {"w": (2,)}, "describe 8"),
])
def test_bad_buckets_are_refused_in_one_line(bucket, expected_shapes, message):
    with pytest.raises(ValueError) as err:
        validate_bucket(bucket, expected_shapes)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_good_bucket_passes_validation():
    validate_bucket(Bucket(0, ["w", "v"], ["float32", "bfloat16"], [[2], [3]], torch.zeros(14, dtype=torch.uint8)),
                    {"w": (2,), "v": (3,)})


def test_dtype_names_are_torch_attribute_names():
    assert dtype_name(torch.float32) == "float32" and dtype_name(torch.bfloat16) == "bfloat16"


def test_local_servers_are_reached_over_loopback():
    assert reachable_address(["http://127.0.0.1:30000", "http://localhost:30001"]) == "127.0.0.1"
