"""Wire types of the SGLang HTTP API: request bodies, validation, and parsing /generate answers."""
import pytest
from pydantic import ValidationError

from dcpo_mcore.rollout.wire import (BeginWeightUpdateRequest, DestroyWeightsUpdateGroupRequest,
                                      EndWeightUpdateRequest, GenerateRequest, GenerateResponse,
                                      InitWeightsUpdateGroupRequest, SamplingParams,
                                      UpdateWeightsFromDistributedRequest, UpdateWeightVersionRequest)

# One element of a real sglang 0.5.23 /generate answer (CPU engine, tiny Qwen2), trimmed.
WIRE = {
    "text": "ab", "output_ids": [101, 399],
    "meta_info": {
        "id": "r1", "finish_reason": {"type": "length", "length": 2}, "prompt_tokens": 3, "weight_version": "default",
        "completion_tokens": 2, "cached_tokens": 0,
        "input_token_logprobs": [[None, 5, None], [-6.27, 6, None], [-5.5, 7, None]],
        "output_token_logprobs": [[-5.76, 101, None], [-6.10, 399, None]],
        "weight_versions": [{"version": "default", "start": 0, "end": 2}],
    },
}


def test_generate_request_body_leaves_unset_fields_to_sglang():
    req = GenerateRequest(input_ids=[1, 2], sampling_params=SamplingParams(temperature=1.0, max_new_tokens=8),
                          logprob_start_len=0)
    assert req.body() == {"input_ids": [1, 2], "sampling_params": {"temperature": 1.0, "max_new_tokens": 8},
                          "return_logprob": True, "logprob_start_len": 0, "stream": False}


@pytest.mark.parametrize("kwargs", [{}, {"input_ids": [1], "text": "x"}, {"input_ids": []},
                                    {"text": "x", "stream": True}])
def test_generate_request_needs_exactly_one_prompt(kwargs):
    with pytest.raises(ValidationError):
        GenerateRequest(**kwargs)


def test_sampling_params_reject_typos_and_bad_values():
    with pytest.raises(ValidationError):
        SamplingParams(seed=1)  # SGLang calls it sampling_seed; a typo must not be sent
    for bad in ({"top_k": 0}, {"top_p": 0.0}, {"temperature": -1.0}, {"max_new_tokens": -1}):
        with pytest.raises(ValidationError):
            SamplingParams(**bad)
    assert SamplingParams(top_k=-1, sampling_seed=2**63 - 1).body() == {"top_k": -1, "sampling_seed": 2**63 - 1}


def test_response_flattens_meta_info():
    r = GenerateResponse.from_wire(WIRE)
    assert r.output_ids == [101, 399] and r.output_logprobs == [-5.76, -6.10]
    assert r.input_ids == [5, 6, 7] and r.input_logprobs == [None, -6.27, -5.5]
    assert r.finished_by == "length" and r.finish_reason.length == 2
    assert r.weight_version == "default" and r.weight_versions[0].end == 2
    assert (r.prompt_tokens, r.completion_tokens, r.rid, r.text) == (3, 2, "r1", "ab")


def test_response_without_logprobs_and_with_stop():
    r = GenerateResponse.from_wire({"text": "", "output_ids": [2], "meta_info": {
        "finish_reason": {"type": "stop", "matched": 2}, "weight_version": "7"}})
    assert r.output_logprobs is None and r.input_logprobs is None
    assert r.finished_by == "stop" and r.finish_reason.matched == 2


@pytest.mark.parametrize("meta", [{"output_token_logprobs": [[-1.0, 5, None], [-1.0, 399, None]]},
                                  {"output_token_logprobs": [[None, 101, None], [-1.0, 399, None]]},
                                  {"output_token_logprobs": [[float("nan"), 101, None], [-1.0, 399, None]]}])
def test_inconsistent_answers_are_errors(meta):
    with pytest.raises(ValueError):
        GenerateResponse.from_wire({"output_ids": [101, 399], "meta_info": meta})


def test_init_weights_update_group_backend_is_mandatory():
    kw = dict(master_address="10.0.0.1", master_port=29500, rank_offset=1, world_size=2)
    with pytest.raises(ValidationError, match="backend"):
        InitWeightsUpdateGroupRequest(**kw)  # SGLang's default 'nccl' hangs a CPU trainer
    with pytest.raises(ValidationError):
        InitWeightsUpdateGroupRequest(**kw, backend="mpi")
    assert InitWeightsUpdateGroupRequest(**kw, backend="gloo").body() == {
        **kw, "group_name": "weight_update_group", "backend": "gloo"}


def test_update_weights_from_distributed_checks_its_lists():
    ok = UpdateWeightsFromDistributedRequest(names=["a.weight", "b.bias"], dtypes=["float32", "bfloat16"],
                                             shapes=[[2, 3], [3]], load_format="flattened_bucket", weight_version="5")
    body = ok.body()
    assert body["load_format"] == "flattened_bucket" and body["flush_cache"] is True and body["selector"] == "all"
    assert body["weight_version"] == "5" and body["abort_all_requests"] is False
    assert "load_format" not in UpdateWeightsFromDistributedRequest(names=["a"], dtypes=["float32"],
                                                                    shapes=[[1]]).body()
    bad = [dict(names=["a", "b"], dtypes=["float32"], shapes=[[1], [1]]),
           dict(names=["a"], dtypes=["torch.float32"], shapes=[[1]]),
           dict(names=["a", "a"], dtypes=["float32"] * 2, shapes=[[1], [1]]),
           dict(names=["a"], dtypes=["float32"], shapes=[[1]], load_format="bucket")]
    for kw in bad:
        with pytest.raises(ValidationError):
            UpdateWeightsFromDistributedRequest(**kw)


def test_small_bodies_match_sglang_defaults():
    assert BeginWeightUpdateRequest().body() == {"selector": "all"}
    assert EndWeightUpdateRequest().body() == {}
    assert DestroyWeightsUpdateGroupRequest().body() == {"group_name": "weight_update_group"}
    assert UpdateWeightVersionRequest(new_version="3").body() == {"new_version": "3", "abort_all_requests": True}
    with pytest.raises(ValidationError):
        UpdateWeightVersionRequest(new_version="")


@pytest.mark.parametrize("raw", [{"error": "x"}, {"output_ids": [1]}, [1, 2], None])
def test_a_non_sample_answer_is_an_error(raw):
    with pytest.raises(ValueError, match="not a /generate sample"):
        GenerateResponse.from_wire(raw)


def test_sampling_params_from_the_rollout_config():
    from dcpo_mcore.config.sections import RolloutConfig

    cfg = RolloutConfig(temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=64)
    assert SamplingParams.from_config(cfg).body() == {"temperature": 0.7, "top_p": 0.9, "top_k": 20,
                                                      "max_new_tokens": 64}
    assert SamplingParams.from_config(cfg, stop=["\n"]).stop == ["\n"]
