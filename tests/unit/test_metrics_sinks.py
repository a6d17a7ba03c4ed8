"""Metric sinks and the metrics.jsonl reader: round trip, resume, damaged files, TensorBoard, errors."""
import io
import json
import math
import os
import re
import sys
from pathlib import Path

import pytest

from dcpo_mcore.metrics import (METRIC_KEYS, ConsoleProgress, JsonlSink, MetricSink, MetricsFileError,
                                MultiSink, TensorBoardSink, WandbSink, build_sinks, read_metrics,
                                set_aside_previous_record)
from dcpo_mcore.metrics.history import encode_line, held_out_accuracy_series
from dcpo_mcore.metrics.keys import NAMESPACES, describe


def _write_lines(run_dir, text: str):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text(text)


def _strict_json(line: str) -> dict:
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name} in {line!r}")
    return json.loads(line, parse_constant=refuse)


def test_jsonl_round_trip_with_non_finite_values(tmp_path):
    sink = JsonlSink(tmp_path)
    sink.log(1, {"reward/mean": 0.25, "clip/token_clip_ratio": 0.5})
    sink.log(2, {"reward/mean": float("nan"), "loss/grad_norm": float("inf"), "loss/policy": -math.inf})
    sink.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    raw = [_strict_json(ln) for ln in lines]  # valid JSON: no bare NaN / Infinity
    assert raw[0] == {"step": 1, "reward/mean": 0.25, "clip/token_clip_ratio": 0.5}
    assert raw[1] == {"step": 2, "reward/mean": "nan", "loss/grad_norm": "inf", "loss/policy": "-inf"}
    back = read_metrics(tmp_path)
    assert back[0] == {"step": 1, "reward/mean": 0.25, "clip/token_clip_ratio": 0.5}
    assert math.isnan(back[1]["reward/mean"])
    assert back[1]["loss/grad_norm"] == math.inf and back[1]["loss/policy"] == -math.inf


def test_jsonl_accepts_tensor_scalars_and_refuses_bad_values(tmp_path):
    torch = pytest.importorskip("torch")
    line = encode_line(3, {"actor/entropy": torch.tensor(1.5), "rollout/generated_responses": 8})
    assert _strict_json(line) == {"step": 3, "actor/entropy": 1.5, "rollout/generated_responses": 8.0}
    with pytest.raises(TypeError, match="reward/mean"):
        encode_line(1, {"reward/mean": "high"})
    with pytest.raises(ValueError, match="reserved"):
        encode_line(1, {"step": 2.0})


def test_every_line_is_flushed_and_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    sink = JsonlSink(tmp_path)
    sink.log(1, {"reward/mean": 0.1})
    sink.log(2, {"reward/mean": 0.2})
    # Not closed: as after a SIGKILL, another reader must already see both steps.
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert len(synced) == 2
    sink.close()


def test_resume_truncates_steps_after_the_checkpoint_atomically(tmp_path, monkeypatch):
    sink = JsonlSink(tmp_path)
    for step in range(1, 6):
        sink.log(step, {"reward/mean": step / 10})
    sink.close()
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append((a, b)), real_replace(a, b)))
    sink = JsonlSink(tmp_path, resume_from_step=3)
    sink.log(4, {"reward/mean": 0.44})
    sink.close()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["reward/mean"] == 0.44 and records[2]["reward/mean"] == 0.3
    assert len(replaced) == 1 and replaced[0][1] == tmp_path / "metrics.jsonl"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temp file left


def test_resume_at_or_past_the_last_step_leaves_the_file_untouched(tmp_path):
    _write_lines(tmp_path, encode_line(1, {"reward/mean": 0.1}) + encode_line(2, {"reward/mean": 0.2}))
    before = (tmp_path / "metrics.jsonl").stat().st_ino
    JsonlSink(tmp_path, resume_from_step=2).close()
    assert (tmp_path / "metrics.jsonl").stat().st_ino == before  # not rewritten
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_a_fresh_run_sets_the_earlier_record_aside_without_losing_it(tmp_path):
    assert set_aside_previous_record(tmp_path) is None  # nothing there yet
    first = encode_line(1, {"reward/mean": 0.1}) + encode_line(2, {"reward/mean": 0.2})
    _write_lines(tmp_path, first)
    assert set_aside_previous_record(tmp_path) == tmp_path / "metrics.jsonl.1.old"
    _write_lines(tmp_path, encode_line(1, {"reward/mean": 0.5}))
    assert set_aside_previous_record(tmp_path) == tmp_path / "metrics.jsonl.2.old"  # never overwrites
    assert (tmp_path / "metrics.jsonl.1.old").read_text() == first
    sink = JsonlSink(tmp_path)
    sink.log(1, {"reward/mean": 0.9})
    sink.close()
    assert [(r["step"], r["reward/mean"]) for r in read_metrics(tmp_path)] == [(1, 0.9)]


def test_reopening_after_a_kill_drops_the_partial_line_before_appending(tmp_path):
    _write_lines(tmp_path, encode_line(1, {"reward/mean": 0.1}) + '{"step": 2, "reward/me')
    sink = JsonlSink(tmp_path)  # no resume step: keep everything intact, drop only the torn line
    sink.log(2, {"reward/mean": 0.2})
    sink.close()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.count("\n") == 2 and "reward/me\"" not in text
    assert [(r["step"], r["reward/mean"]) for r in read_metrics(tmp_path)] == [(1, 0.1), (2, 0.2)]


def test_reader_tolerates_a_truncated_last_line(tmp_path):
    _write_lines(tmp_path, encode_line(1, {"reward/mean": 0.1}) + encode_line(2, {"reward/mean": 0.2})
                 + '{"step": 3, "reward/mean": 0.')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_reader_names_the_line_of_a_corrupt_middle_line(tmp_path):
    _write_lines(tmp_path, encode_line(1, {"a/b": 1}) + "{garbage\n" + encode_line(3, {"a/b": 3}))
    with pytest.raises(MetricsFileError) as info:
        read_metrics(tmp_path)
    msg = str(info.value)
    assert "metrics.jsonl:2:" in msg and "line 2" in msg and "\n" not in msg


def test_reader_refuses_a_record_without_integer_step_in_the_middle(tmp_path):
    _write_lines(tmp_path, '{"reward/mean": 1}\n' + encode_line(2, {"a/b": 1}))
    with pytest.raises(MetricsFileError, match=r"metrics.jsonl:1: .*integer 'step'"):
        read_metrics(tmp_path)


def test_reader_missing_file_is_one_line(tmp_path):
    with pytest.raises(MetricsFileError) as info:
        read_metrics(tmp_path)
    msg = str(info.value)
    assert "no metrics file" in msg and "metrics.jsonl" in msg and "\n" not in msg
    with pytest.raises(MetricsFileError, match="not a directory"):
        read_metrics(tmp_path / "nope")


def test_held_out_accuracy_series_takes_each_evaluated_steps_avg1_of_the_named_set():
    rows = [{"step": 0, "eval/arith/avg@1": 0.35, "eval/arith/avg@8": 0.5},
            {"step": 1, "reward/mean": 0.2},
            {"step": 2, "eval/arith/avg@1": 0.5, "eval/other/avg@1": 0.1, "eval/arith/format_error_ratio": 0.0}]
    assert held_out_accuracy_series(rows, "arith") == [(0, 0.35), (2, 0.5)]
    assert held_out_accuracy_series([{"step": 1, "reward/mean": 0.2}], "arith") == []
    assert held_out_accuracy_series(rows, "other") == [(2, 0.1)]
    assert held_out_accuracy_series(rows, "missing") == []


def test_tensorboard_event_file_reads_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    sink = TensorBoardSink(tmp_path)
    sink.log(1, {"reward/mean": 0.25, "clip/token_clip_ratio": 0.125})
    sink.log(2, {"reward/mean": 0.75, "clip/token_clip_ratio": 0.0625})
    sink.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"reward/mean", "clip/token_clip_ratio"}
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.25), (2, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("clip/token_clip_ratio")] == [(1, 0.125), (2, 0.0625)]


def test_tensorboard_missing_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.raises(RuntimeError) as info:
        TensorBoardSink(tmp_path)
    msg = str(info.value)
    assert "bash tools/setup_env.sh" in msg and "logging.tensorboard=false" in msg and "\n" not in msg
    assert not (tmp_path / "tb").exists()


def test_wandb_missing_package_is_one_line(tmp_path, monkeypatch):
    # Forces the missing-package path even where wandb is installed, without ever starting a run.
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(RuntimeError) as info:
        WandbSink("proj", tmp_path, {"a": 1})
    msg = str(info.value)
    assert "pip install wandb or set logging.wandb=false" in msg and "\n" not in msg


class _Recorder:
    def __init__(self, fail_close=False):
        self.logged, self.closed, self.fail_close = [], False, fail_close

    def log(self, step, metrics):
        self.logged.append((step, dict(metrics)))

    def close(self):
        self.closed = True
        if self.fail_close:
            raise OSError("disk gone")


def test_multisink_fans_out_and_closes_all_even_when_one_fails():
    a, b, c = _Recorder(), _Recorder(fail_close=True), _Recorder()
    multi = MultiSink([a, b, c])
    assert isinstance(multi, MetricSink) and isinstance(a, MetricSink)
    multi.log(7, {"reward/mean": 1.0})
    assert a.logged == b.logged == c.logged == [(7, {"reward/mean": 1.0})]
    with pytest.raises(OSError, match="disk gone"):
        multi.close()
    assert a.closed and b.closed and c.closed


def test_build_sinks_follows_the_logging_switches(tmp_path):
    pytest.importorskip("tensorboard")
    _write_lines(tmp_path, "".join(encode_line(s, {"reward/mean": s}) for s in (1, 2, 3)))
    with build_sinks(tmp_path, tensorboard=True, wandb=False, wandb_project="p", console=True,
                     total_steps=10, start_step=2, resume_from_step=2) as sinks:
        kinds = [type(s) for s in sinks.sinks]
        assert kinds == [JsonlSink, TensorBoardSink, ConsoleProgress]
        assert sinks.sinks[2].start_step == 2
        sinks.log(3, {"reward/mean": 33.0})
    assert [(r["step"], r["reward/mean"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 33.0)]
    only = build_sinks(tmp_path / "b", tensorboard=False, wandb=False, wandb_project="p", console=False,
                       total_steps=10, start_step=0, resume_from_step=None)
    assert [type(s) for s in only.sinks] == [JsonlSink]
    only.close()
    assert not (tmp_path / "b" / "tb").exists()


def test_build_sinks_fails_before_any_step_when_wandb_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(RuntimeError, match="logging.wandb=false"):
        build_sinks(tmp_path, tensorboard=False, wandb=True, wandb_project="p", console=False,
                    total_steps=1, start_step=0, resume_from_step=None)


def _keys_written_in_the_code() -> set[str]:
    """Every string literal in dcpo_mcore/ that looks like a metric key (namespace/name)."""
    import ast

    pkg = Path(__file__).resolve().parents[2] / "dcpo_mcore"
    found = set()
    for path in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                head, sep, rest = node.value.partition("/")
                if sep and head in NAMESPACES and rest and re.fullmatch(r"[a-z0-9_@]+", rest):
                    found.add(node.value)
    return found


def test_every_metric_key_in_the_code_is_documented():
    written = _keys_written_in_the_code()
    assert len(written) > 50 and "clip/token_clip_ratio" in written  # the scan really finds them
    assert sorted(k for k in written if describe(k) is None) == []
    assert all(k.split("/")[0] in NAMESPACES and v and "\n" not in v for k, v in METRIC_KEYS.items())
    assert "RUR" in METRIC_KEYS["adv/nonzero_ratio"] and "Eq. 9" in METRIC_KEYS["clip/token_clip_ratio"]


@pytest.mark.parametrize("key,documented", [
    ("eval/qwen_aime_2024/avg@32", True), ("eval/demo/avg@1", True), ("eval/x/avg@1_sampled", True),
    ("eval/x/problems", True), ("eval/x/avg@", False), ("clip/nope", False), ("eval/a/b/avg@1", False)])
def test_templated_keys(key, documented):
    assert (describe(key) is not None) == documented


def test_console_progress_is_a_sink_writing_to_its_stream():
    buf = io.StringIO()
    sink = ConsoleProgress(4, stream=buf)
    sink.log(1, {"reward/mean": 0.5, "timing/step_seconds": 2.0})
    sink.close()
    assert buf.getvalue() == "step 1/4 (25.0%) | 2.0 s/step | ETA 6s | reward 0.5\n"
