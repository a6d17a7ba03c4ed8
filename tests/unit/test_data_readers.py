"""dcpo_mcore.data loading: readers, keys, replicas/conflicts, bad rows, templates, the shipped files."""
import copy
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dcpo_mcore.data import BAD_ROW_REASONS, DataError, load_prompt_dataset, render_prompt
from dcpo_mcore.hf.tiny import make_bpe_tokenizer

SHIPPED = Path(__file__).resolve().parents[2] / "data" / "eval"
SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@pytest.fixture(scope="module")
def tok():
    return make_bpe_tokenizer(None)


def row(source="src", index=0, question="What is 1+2?", answer="3", system=True):
    prompt = ([{"role": "system", "content": SYSTEM}] if system else []) + [{"role": "user", "content": question}]
    return {"data_source": source, "prompt": prompt, "ability": "MATH",
            "reward_model": {"ground_truth": answer, "style": "rule"}, "extra_info": {"index": index}}


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def load(files, tok, **kw):
    return load_prompt_dataset(files, tok, **kw)


# ---------------------------------------------------------------- formats, rendering, tokenisation

def test_parquet_and_jsonl_give_identical_records(tmp_path, tok):
    rows = [row(index=i, question=f"What is {i}+{i}?", answer=str(2 * i)) for i in range(5)]
    a = load(write_parquet(tmp_path / "a.parquet", rows), tok)
    b = load(write_jsonl(tmp_path / "b.jsonl", rows), tok)
    assert len(a) == len(b) == 5
    for ra, rb in zip(a, b):
        assert (ra.key, ra.prompt_text, ra.prompt_ids, ra.ground_truth) == (rb.key, rb.prompt_text, rb.prompt_ids,
                                                                            rb.ground_truth)
    first = a[0]
    assert first.key == "src:0" and first.index == "0" and first.data_source == "src" and first.ground_truth == "0"
    assert first.messages == rows[0]["prompt"]
    # ChatML rendering with the assistant turn opened, exactly as the tokenizer's template does it.
    assert first.prompt_text == (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is 0+0?<|im_end|>\n"
                                 "<|im_start|>assistant\n")
    assert first.prompt_ids == tok(first.prompt_text, add_special_tokens=False)["input_ids"]
    assert tok.decode(first.prompt_ids) == first.prompt_text  # no token added or lost
    assert a.report.rows_by_file == {str(tmp_path / "a.parquet"): 5}


def test_jsonl_plain_string_prompt_is_one_user_message(tmp_path, tok):
    r = {**row(), "prompt": "What is 4+4?"}
    rec = load(write_jsonl(tmp_path / "p.jsonl", [r]), tok)[0]
    assert rec.messages == [{"role": "user", "content": "What is 4+4?"}]
    assert rec.prompt_text == "<|im_start|>user\nWhat is 4+4?<|im_end|>\n<|im_start|>assistant\n"


def test_chat_template_none_joins_contents_and_adds_no_special_tokens(tmp_path, tok):
    rec = load(write_jsonl(tmp_path / "p.jsonl", [row()]), tok, chat_template="none")[0]
    assert rec.prompt_text == f"{SYSTEM}\nWhat is 1+2?"
    assert rec.prompt_ids == tok(rec.prompt_text, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|im_start|>") not in rec.prompt_ids


def test_no_special_tokens_are_added_even_by_a_bos_adding_tokenizer(tmp_path, tok):
    from tokenizers import processors

    bos = copy.deepcopy(tok)  # a Llama-style tokenizer: puts a BOS in front unless told not to
    bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tok.pad_token_id)])
    assert bos("hi")["input_ids"][0] == tok.pad_token_id
    rec = load(write_jsonl(tmp_path / "p.jsonl", [row()]), bos)[0]
    assert rec.prompt_ids[0] != tok.pad_token_id and rec.prompt_ids == tok(rec.prompt_text)["input_ids"]


def test_tokenizer_without_chat_template_is_a_one_line_error(tmp_path, tok):
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(DataError, match="data.chat_template=none") as err:
        load(write_jsonl(tmp_path / "p.jsonl", [row()]), bare)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="unknown chat_template mode 'chatml'"):
        render_prompt(tok, row()["prompt"], "chatml")


def test_ground_truth_list_keeps_the_first_answer(tmp_path, tok):
    r = row()
    r["reward_model"]["ground_truth"] = ["3", "three"]
    assert load(write_jsonl(tmp_path / "p.jsonl", [r]), tok)[0].ground_truth == "3"


# ---------------------------------------------------------------- keys, replicas, conflicts

def test_key_modes(tmp_path, tok):
    rows = [row(source="qwen_x", index=7), row(source="qwen_x", index="a/b.json", question="What is 5*6?", answer="30")]
    path = write_jsonl(tmp_path / "k.jsonl", rows)
    assert load(path, tok).keys == ["qwen_x:7", "qwen_x:a/b.json"]
    hashed = load(path, tok, prompt_key="prompt_hash")
    assert hashed.keys == ["sha1:" + hashlib.sha1(r.prompt_text.encode()).hexdigest()[:16] for r in hashed]
    assert len(set(hashed.keys)) == 2 and all(len(k) == 5 + 16 for k in hashed.keys)


def test_missing_index_is_fine_under_prompt_hash_only(tmp_path, tok):
    r = row()
    del r["extra_info"]
    path = write_jsonl(tmp_path / "k.jsonl", [r])
    assert load(path, tok, prompt_key="prompt_hash")[0].index == ""
    with pytest.raises(DataError, match="extra_info.index"):
        load(path, tok)


def test_replicas_collapse_or_are_kept_with_counts(tmp_path, tok):
    problems = [row(index=i, question=f"What is {i}*3?", answer=str(3 * i)) for i in range(3)]
    path = write_parquet(tmp_path / "r.parquet", [p for _ in range(4) for p in problems])  # 4 interleaved copies
    collapsed = load(path, tok)
    assert collapsed.keys == ["src:0", "src:1", "src:2"]
    assert collapsed.replica_counts == {"src:0": 4, "src:1": 4, "src:2": 4}
    rep = collapsed.report
    assert (rep.rows_read, rep.rows_kept, rep.duplicates, rep.collapsed) == (12, 3, 9, 9) and rep.is_consistent()
    kept = load(path, tok, dedup_replicas=False)
    assert kept.keys == ["src:0", "src:1", "src:2"] * 4
    assert kept.replica_counts == collapsed.replica_counts
    assert (kept.report.rows_kept, kept.report.duplicates, kept.report.collapsed) == (12, 9, 0)


def test_replicas_across_files_collapse(tmp_path, tok):
    a = write_parquet(tmp_path / "a.parquet", [row(index=0), row(index=1, question="What is 2+2?", answer="4")])
    b = write_jsonl(tmp_path / "b.jsonl", [row(index=1, question="What is 2+2?", answer="4")])
    ds = load([a, b], tok)
    assert ds.keys == ["src:0", "src:1"] and ds.replica_counts["src:1"] == 2 and ds.report.collapsed == 1


def test_conflicting_answer_is_an_error_naming_both_rows(tmp_path, tok):
    a = write_parquet(tmp_path / "a.parquet", [row(index=0, answer="3")])
    b = write_jsonl(tmp_path / "b.jsonl", [row(index=1, question="x"), row(index=0, answer="4")])
    with pytest.raises(DataError) as err:
        load([a, b], tok)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{b} line 2" in msg and f"{a} row 0" in msg and "'3'" in msg and "'4'" in msg and "'src:0'" in msg


def test_conflicting_prompt_suggests_prompt_hash_and_skip_keeps_first(tmp_path, tok):
    path = write_jsonl(tmp_path / "c.jsonl", [row(index=0), row(index=0, question="What is 9+9?", answer="18")])
    with pytest.raises(DataError, match="different prompt and answer; .*data.prompt_key=prompt_hash"):
        load(path, tok)
    ds = load(path, tok, on_bad_row="skip")
    assert ds.keys == ["src:0"] and ds[0].ground_truth == "3"
    assert ds.report.skipped_by_reason == {"conflicting_duplicate": 1} and ds.report.is_consistent()
    # Under prompt_hash the two are different problems, so nothing conflicts.
    assert len(load(path, tok, prompt_key="prompt_hash")) == 2


# ---------------------------------------------------------------- bad rows

def _mutated(change):
    r = row()
    change(r)
    return r


BAD_ROWS = [  # (reason, the bad row as a JSONL line, words the message must contain)
    ("missing_prompt", _mutated(lambda r: r.pop("prompt")), "prompt"),
    ("missing_prompt", _mutated(lambda r: r.update(prompt=[])), "prompt"),
    ("bad_prompt", _mutated(lambda r: r.update(prompt=[{"role": "user", "content": 5}])), "prompt[0].content"),
    ("bad_prompt", _mutated(lambda r: r.update(prompt={"role": "user"})), "list of {role, content}"),
    ("bad_prompt", _mutated(lambda r: r.update(prompt=["hi"])), "prompt[0]"),
    ("missing_ground_truth", _mutated(lambda r: r.pop("reward_model")), "reward_model.ground_truth"),
    ("missing_ground_truth", _mutated(lambda r: r["reward_model"].update(ground_truth="  ")), "ground_truth"),
    ("missing_ground_truth", _mutated(lambda r: r["reward_model"].update(ground_truth=[])), "empty list"),
    ("bad_ground_truth", _mutated(lambda r: r["reward_model"].update(ground_truth=42)), "not 42"),
    ("missing_index", _mutated(lambda r: r["extra_info"].pop("index")), "extra_info.index"),
    ("bad_index", _mutated(lambda r: r["extra_info"].update(index=1.5)), "float 1.5"),
    ("bad_index", _mutated(lambda r: r["extra_info"].update(index=True)), "bool True"),
    ("missing_data_source", _mutated(lambda r: r.update(data_source="")), "data_source"),
    ("bad_data_source", _mutated(lambda r: r.update(data_source=3)), "data_source is a int"),
    ("bad_json", '{"data_source": "src", "prompt":', "not valid JSON"),
    ("bad_json", "[1, 2]", "JSON list, not an object"),
]


@pytest.mark.parametrize("reason,bad,words", BAD_ROWS, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(BAD_ROWS)])
def test_bad_row_is_a_one_line_error_or_a_counted_skip(tmp_path, tok, reason, bad, words):
    assert reason in BAD_ROW_REASONS
    path = write_jsonl(tmp_path / "bad.jsonl", [row(index=5), bad, row(index=6, question="q")])
    with pytest.raises(DataError) as err:
        load(path, tok)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path} line 2: ") and words in msg, msg
    assert "data.on_bad_row=skip" in msg
    ds = load(path, tok, on_bad_row="skip")
    assert ds.keys == ["src:5", "src:6"]
    assert ds.report.skipped_by_reason == {reason: 1} and ds.report.is_consistent()
    assert ds.report.examples[reason].startswith(f"{path} line 2: ")


def test_skip_counts_every_reason_and_accounts_for_every_row(tmp_path, tok):
    lines = [row(index=0)] + [bad for _, bad, _ in BAD_ROWS] + ["", row(index=1, question="q")]  # "" = blank line
    ds = load(write_jsonl(tmp_path / "mix.jsonl", lines), tok, on_bad_row="skip")
    expected = {}
    for reason, _, _ in BAD_ROWS:
        expected[reason] = expected.get(reason, 0) + 1
    rep = ds.report
    assert rep.skipped_by_reason == expected
    assert (rep.rows_read, rep.rows_kept, rep.skipped) == (len(BAD_ROWS) + 2, 2, len(BAD_ROWS))
    assert rep.is_consistent() and "skipped 16" in rep.summary()
    json.dumps(rep.to_dict())  # JSON-able for the run directory


def test_parquet_bad_row_names_the_row(tmp_path, tok):
    rows = [row(index=0), row(index=1, question="q2"), row(index=2, question="q3", answer=None)]
    path = write_parquet(tmp_path / "n.parquet", rows)
    with pytest.raises(DataError, match=rf"^{path} row 2: no reward_model.ground_truth"):
        load(path, tok)


def test_template_failure_is_a_bad_prompt_row(tmp_path, tok):
    picky = copy.deepcopy(tok)
    picky.chat_template = ("{%- for m in messages %}{%- if m['role'] == 'tool' %}{{ raise_exception('no tools') }}"
                           "{%- endif %}{{ m['content'] }}{%- endfor %}")
    bad = _mutated(lambda r: r["prompt"].append({"role": "tool", "content": "x"}))
    path = write_jsonl(tmp_path / "t.jsonl", [row(index=0), {**bad, "extra_info": {"index": 1}}])
    with pytest.raises(DataError, match=rf"^{path} line 2: the chat template cannot render .*no tools"):
        load(path, picky)
    assert load(path, picky, on_bad_row="skip").report.skipped_by_reason == {"bad_prompt": 1}


# ---------------------------------------------------------------- files and options

def test_file_level_errors_are_one_line(tmp_path, tok):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    (tmp_path / "adir.jsonl").mkdir()
    cases = [(tmp_path / "nope.parquet", "does not exist"), (tmp_path / "x.csv", "unsupported file type '.csv'"),
             (corrupt, "cannot read as parquet"), (latin1, "cannot read as UTF-8 JSONL"),
             (tmp_path / "adir.jsonl", "is a directory")]
    for path, words in cases:
        with pytest.raises(DataError) as err:
            load(path, tok)
        msg = str(err.value)
        assert msg.startswith(str(path)) and words in msg and "\n" not in msg, msg


def test_bad_options_and_empty_results(tmp_path, tok):
    path = write_jsonl(tmp_path / "ok.jsonl", [row()])
    with pytest.raises(DataError, match="no data files given"):
        load([], tok)
    with pytest.raises(DataError, match="data.prompt_key to one of source_index, prompt_hash"):
        load(path, tok, prompt_key="index")
    with pytest.raises(DataError, match="data.on_bad_row to one of error, skip"):
        load(path, tok, on_bad_row="ignore")
    with pytest.raises(DataError, match="max_prompt_tokens must be a positive int"):
        load(path, tok, max_prompt_tokens=0)
    all_bad = write_jsonl(tmp_path / "bad.jsonl", ["nonsense"])
    with pytest.raises(DataError, match=r"no usable prompt .*first skipped row: .*line 1: not valid JSON"):
        load(all_bad, tok, on_bad_row="skip")


def test_too_long_prompts_are_filtered_and_counted(tmp_path, tok):
    short, long_ = row(index=0, question="Hi"), row(index=1, question="What is 12+34? " * 20)
    path = write_jsonl(tmp_path / "len.jsonl", [short, long_, long_, long_])
    limit = len(load(path, tok, chat_template="none")[0].prompt_ids) + 10  # room for the short one only
    ds = load(path, tok, chat_template="none", max_prompt_tokens=limit)
    assert ds.keys == ["src:0"] and ds.report.too_long == 1 and ds.report.collapsed == 2
    assert ds.replica_counts == {"src:0": 1} and ds.report.is_consistent()
    kept = load(path, tok, chat_template="none", max_prompt_tokens=limit, dedup_replicas=False)
    assert kept.report.too_long == 3 and kept.report.is_consistent()
    assert len(load(path, tok, chat_template="none", max_prompt_tokens=10_000)) == 2
    with pytest.raises(DataError, match="too long 4, .*raise rollout.max_prompt_tokens"):
        load(path, tok, chat_template="none", max_prompt_tokens=1, dedup_replicas=False)


# ---------------------------------------------------------------- the shipped evaluation sets (data/eval/)

@pytest.mark.parametrize("name,unique,rows,copies", [
    ("aime_2024", 30, 960, 32), ("aime_2025", 30, 960, 32), ("amc2023", 40, 1280, 32), ("math500", 500, 500, 1)])
def test_shipped_files_load_with_expected_counts(tok, name, unique, rows, copies):
    path = SHIPPED / f"{name}.parquet"
    ds = load(path, tok)
    assert len(ds) == unique and len(set(ds.keys)) == unique
    assert ds.report.rows_read == rows and ds.report.collapsed == rows - unique and ds.report.skipped == 0
    assert set(ds.replica_counts.values()) == {copies}
    assert all(r.data_source == f"qwen_{name}" and r.ground_truth and r.key.startswith(f"qwen_{name}:") for r in ds)
    assert all(r.messages[0]["content"] == SYSTEM and r.prompt_text.endswith("<|im_start|>assistant\n") for r in ds)
    full = load(path, tok, dedup_replicas=False)
    assert len(full) == rows and len(set(full.keys)) == unique


def test_shipped_files_together_have_unique_keys_in_both_modes(tok):
    files = sorted(SHIPPED.glob("*.parquet"))
    assert len(files) == 4
    for mode in ("source_index", "prompt_hash"):
        ds = load(files, tok, prompt_key=mode)
        assert len(ds) == 600 and len(set(ds.keys)) == 600, mode


def test_shipped_files_are_the_released_ones():
    """data/eval/README.md names the source and licence of exactly these bytes."""
    import hashlib

    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(SHIPPED.glob("*.parquet"))}
    assert digests == {
        "aime_2024.parquet": "d4b246921be2bc22d9498d99095fa81dc72299ef8db227f8d5aefed85891b920",
        "aime_2025.parquet": "8cefa25aa97a1b1bcfc4b1e3b7166ed36a32e05cffdbe0fd36a6804447564fb6",
        "amc2023.parquet": "fc0f891ee0a2094a2844a604294347896cfb9081ab49891c856a1a41fbbefdc4",
        "math500.parquet": "0d8ceff9405e4c2b27dfe9f0a100739b9b5bb8f21c749ac82ff09f1a47063a1c",
    }
    notice = (SHIPPED / "README.md").read_text()
    assert "Apache License 2.0" in notice and all(name in notice for name in digests)
