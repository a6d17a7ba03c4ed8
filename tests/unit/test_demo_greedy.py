"""The pretraining stage's fast greedy decoder equals transformers' own greedy generate, prompt by prompt."""
from types import SimpleNamespace

import pytest
import torch

from dcpo_mcore.data import arith_alphabet, arith_questions
from dcpo_mcore.demo import make_char_tokenizer, make_demo_model
from dcpo_mcore.demo.greedy import greedy_accuracy, greedy_generate
from dcpo_mcore.reward import get_verifier

SMALL = {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128, "num_attention_heads": 4,
         "num_query_groups": 2, "vocab_size": 40, "max_position_embeddings": 64, "params_dtype": "float32"}


@pytest.fixture(scope="module")
def model_and_tok(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    tok = make_char_tokenizer(None, arith_alphabet())
    out = make_demo_model(tmp_path_factory.mktemp("greedy") / "m", SMALL, tok, seed=4)
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    return model, tok


def test_matches_transformers_generate(model_and_tok):
    model, tok = model_and_tok
    questions = [q for q, _ in arith_questions(3)[:12]]  # 13- and 14-character prompts, interleaved
    prompts = [tok(q, add_special_tokens=False)["input_ids"] for q in questions] + [[5], [7, 8, 9]]
    eos = tok.eos_token_id
    got = greedy_generate(model, prompts, eos, max_new_tokens=10, batch_size=5)
    for p, g in zip(prompts, got):
        ref = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=10, eos_token_id=eos,
                             pad_token_id=tok.pad_token_id, attention_mask=torch.ones(1, len(p), dtype=torch.long))
        want = ref[0, len(p):].tolist()
        if eos in want:
            want = want[: want.index(eos) + 1]
        assert g == want
        assert len(g) <= 10 and (eos not in g or g.index(eos) == len(g) - 1)


def test_stops_at_eos_per_prompt():
    # A fake model that emits eos right away for prompts starting with an odd token, and counts up otherwise
    # (the cache it hands back is the prompts' first tokens; later calls see only the newest token).
    class Fake:
        def __call__(self, input_ids, past_key_values=None, use_cache=True):
            first = input_ids[:, 0] if past_key_values is None else past_key_values
            last = input_ids[:, -1]
            nxt = torch.where(first % 2 == 1, torch.ones_like(last), (last + 1).clamp(max=19))
            logits = torch.nn.functional.one_hot(nxt, 20).float().unsqueeze(1)
            return SimpleNamespace(logits=logits, past_key_values=first)

    out = greedy_generate(Fake(), [[3, 4], [2, 5], [4, 10]], eos_id=1, max_new_tokens=4)
    assert out == [[1], [6, 7, 8, 9], [11, 12, 13, 14]]
    assert greedy_generate(Fake(), [[3, 4], [5, 6]], eos_id=1, max_new_tokens=4) == [[1], [1]]


def test_accuracy_grades_boxed_answers(model_and_tok):
    _, tok = model_and_tok
    box = lambda s: tok(s, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]  # noqa: E731

    class Scripted:  # answers "\boxed{5}" to prompt 0 and "\boxed{7}" to prompt 1, one token per call
        def __init__(self, answers):
            self.answers, self.pos = answers, 0

        def __call__(self, input_ids, past_key_values=None, use_cache=True):
            col = [a[min(self.pos, len(a) - 1)] for a in self.answers]
            self.pos += 1
            logits = torch.nn.functional.one_hot(torch.tensor(col), len(tok)).float().unsqueeze(1)
            return SimpleNamespace(logits=logits, past_key_values=None)

    records = [SimpleNamespace(prompt_ids=[3, 4], ground_truth="5"),
               SimpleNamespace(prompt_ids=[3, 5], ground_truth="8")]
    acc, texts = greedy_accuracy(Scripted([box("\\boxed{5}"), box("\\boxed{7}")]), tok, records,
                                 get_verifier("math"), max_new_tokens=12)
    assert texts == ["\\boxed{5}", "\\boxed{7}"] and acc == 0.5


def test_accuracy_by_kind_by_hand(model_and_tok):
    from dcpo_mcore.demo.by_kind import accuracy_by_kind, question_kind
    from dcpo_mcore.demo.run import _kinds_markdown

    _, tok = model_and_tok
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    box = lambda s: ids(s) + [tok.eos_token_id]  # noqa: E731

    class Scripted:  # answers by prompt; greedy_generate calls it once per group of equal-length prompts
        def __init__(self, by_prompt):
            self.by_prompt, self.batch, self.pos = by_prompt, [], 0

        def __call__(self, input_ids, past_key_values=None, use_cache=True):
            if past_key_values is None:  # a new group starts with its prompts
                self.batch, self.pos = [self.by_prompt[tuple(row.tolist())] for row in input_ids], 0
            col = [a[min(self.pos, len(a) - 1)] for a in self.batch]
            self.pos += 1
            logits = torch.nn.functional.one_hot(torch.tensor(col), len(tok)).float().unsqueeze(1)
            return SimpleNamespace(logits=logits, past_key_values="cache")

    questions = [("What is 12+34?", "46", "\\boxed{46}"), ("What is 3*45?", "135", "\\boxed{135}"),
                 ("What is 20+30?", "50", "\\boxed{51}"), ("What is 7*11?", "77", "\\boxed{76}"),
                 ("What is 11+11?", "22", "\\boxed{22}")]
    records = [SimpleNamespace(prompt_ids=ids(q), ground_truth=gt) for q, gt, _ in questions]
    model = Scripted({tuple(ids(q)): box(a) for q, _, a in questions})
    got = accuracy_by_kind(model, tok, records, max_new_tokens=12)
    assert got == {"all": 3 / 5, "addition": 2 / 3, "multiplication": 1 / 2, "n_addition": 3, "n_multiplication": 2}
    assert [question_kind(q) for q, *_ in questions] == ["addition", "multiplication", "addition",
                                                          "multiplication", "addition"]
    table = _kinds_markdown({"pretrained": got}, "the held-out set")
    assert "| pretrained | 60.0% | 66.7% | 50.0% |" in table and "on the held-out set by kind" in table
