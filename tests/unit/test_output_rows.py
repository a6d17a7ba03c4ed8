"""Row arithmetic of the response-rows-only output layer (engine/output_rows.py).

The engine-level checks (log-probs equal Hugging Face's, training equal with the hooks detached, with
and without sequence parallel) are in tests/dist/test_engine_logprobs.py and
test_engine_layout_invariance.py.
"""
import pytest
import torch

from dcpo_mcore.engine.output_rows import rows_of_sequence_first


def test_hand_values_for_two_rows_of_three():
    # [B=2, S=3] flat b*3+s -> row s*2+b of the sequence-first [S*B] view
    got = rows_of_sequence_first(torch.arange(6), seq_len=3, batch=2)
    assert got.tolist() == [0, 2, 4, 1, 3, 5]


def test_matches_the_batch_first_view_on_random_positions():
    gen = torch.Generator().manual_seed(0)
    seq_len, batch, width = 7, 5, 4
    hidden = torch.randn(seq_len, batch, width, generator=gen)  # megatron's [S, B, H]
    flat = torch.randperm(seq_len * batch, generator=gen)[:13]
    picked = hidden.reshape(seq_len * batch, width)[rows_of_sequence_first(flat, seq_len, batch)]
    expected = hidden.transpose(0, 1).reshape(batch * seq_len, width)[flat]
    assert torch.equal(picked, expected)


def test_one_packed_row_is_the_identity():
    flat = torch.tensor([3, 4, 9, 10, 11])
    assert rows_of_sequence_first(flat, seq_len=12, batch=1).tolist() == flat.tolist()


def test_a_position_outside_the_micro_batch_is_refused():
    with pytest.raises(ValueError, match="outside a \\[2, 3\\] micro-batch"):
        rows_of_sequence_first(torch.tensor([6]), seq_len=3, batch=2)
