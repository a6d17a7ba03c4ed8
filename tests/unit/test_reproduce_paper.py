"""tools/reproduce_paper.py and dcpo_mcore/demo/paper.py: the plan, the series read from metrics, the
verdict arithmetic by hand, the claims on made-up runs, and what a second call reuses, resumes or reruns."""
import importlib.util
from pathlib import Path

import pytest

from dcpo_mcore.demo import experiments, paper
from dcpo_mcore.demo.paper import FAILS, HOLDS, UNRESOLVED, RunSummary, paired_verdict, ratio_verdict

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("reproduce_paper", REPO / "tools" / "reproduce_paper.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


# ------------------------------------------------------------------------------------------ plan
def test_plan_is_seed_major_and_the_reward_control_runs_once():
    runs = paper.plan([1, 2, 3])
    assert len(runs) == 3 * (len(paper.RUNS) - 1) + 1
    assert [s for _, s in runs[:len(paper.RUNS)]] == [1] * len(paper.RUNS)  # all of seed 1 first
    assert [s for r, s in runs if r.label == "grpo_binary"] == [1]
    assert [(r.label, s) for r, s in paper.plan([5, 6], ["dcpo"])] == [("dcpo", 5), ("dcpo", 6)]
    with pytest.raises(ValueError, match="unknown run label.*nope; valid: dcpo"):
        paper.plan([1], ["dcpo", "nope"])


def test_each_ablation_is_one_change_to_grpo_without_kl():
    by = {r.label: r.overrides for r in paper.RUNS}
    assert by["grpo_nokl"] == ("algo.name=grpo", "algo.kl_coef=0")
    assert by["grpo_otm"] == (*by["grpo_nokl"], "algo.aggregation=otm")
    assert by["grpo_sas"] == ("algo.name=grpo_sas",) and by["grpo_dac"] == ("algo.name=grpo_dac",)
    assert by["grpo_binary"] == ("algo.name=grpo", "reward.scheme=binary")


# ---------------------------------------------------------------------------------------- series
def _records(rur, tcr, evals, k=4, ds="arith"):
    rows = []
    for step, (g, s) in evals.items():
        if step == 0:
            rows.append({"step": 0, f"eval/{ds}/avg@1": g, f"eval/{ds}/avg@{k}": s})
    for i, (u, c) in enumerate(zip(rur, tcr), 1):
        rows.append({"step": i, paper.RUR_KEY: u, paper.TCR_KEY: c, paper.ENTROPY_KEY: 1.0 / i,
                     paper.RESPONSES_KEY: 256.0, paper.STEP_SECONDS_KEY: 3.0})
        if i in evals:
            g, s = evals[i]
            rows.append({"step": i, f"eval/{ds}/avg@1": g, f"eval/{ds}/avg@{k}": s})
    return rows


def test_series_keep_the_last_record_of_a_step_run_twice_and_quarters_by_hand():
    rows = _records([0.1 * i for i in range(1, 9)], [0.01] * 8, {0: (0.3, 0.25), 8: (0.5, 0.4)})
    # a resume from step 6 ran steps 7 and 8 again: their second records win
    rows += [{"step": 7, paper.RUR_KEY: 0.0, paper.TCR_KEY: 0.0}, {"step": 8, paper.RUR_KEY: 1.0, paper.TCR_KEY: 0.0}]
    s = paper.summarise_run("dcpo", 1, rows, "arith", 4)
    assert s.steps == list(range(1, 9))
    assert s.series[paper.RUR_KEY] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.0, 1.0])
    assert s.mean(paper.RUR_KEY, "first") == pytest.approx(0.15)  # steps 1-2
    assert s.mean(paper.RUR_KEY, "last") == pytest.approx(0.5)  # steps 7-8: (0.0 + 1.0) / 2
    assert s.greedy == [(0, 0.3), (8, 0.5)] and s.sampled == [(0, 0.25), (8, 0.4)]
    assert s.accuracy_after_start("sampled") == 0.4  # step 0 is the start, not a result
    assert paper.summarise_run("x", 1, rows, "arith", 1).sampled == []  # k = 1 reads avg@1_sampled


# ------------------------------------------------------------------------------------- verdicts
def test_paired_verdict_by_hand():
    # diffs 0.2, 0.2, 0.19: mean 0.19667, sd 0.005774, 2 s.e. = 2 * 0.005774 / sqrt(3) = 0.006667
    v = paired_verdict([0.7, 0.72, 0.68], [0.5, 0.52, 0.49])
    assert v.verdict == HOLDS and v.difference == pytest.approx(0.196667, abs=1e-6)
    assert v.margin == pytest.approx(0.0066667, abs=1e-6) and v.n == 3
    assert paired_verdict([0.5, 0.52, 0.49], [0.7, 0.72, 0.68]).verdict == FAILS
    # diffs -0.05, 0.1: mean 0.025 within 2 s.e. = 2 * 0.106066 / sqrt(2) = 0.15
    v = paired_verdict([0.5, 0.6], [0.55, 0.5])
    assert v.verdict == UNRESOLVED and v.margin == pytest.approx(0.15)
    assert paired_verdict([0.9], [0.1]).verdict == UNRESOLVED  # one seed: no spread, no verdict


def test_ratio_verdict_on_the_log_scale_by_hand():
    # ratios 20, 30 against 10: log ratios - log 10 = 0.6931, 1.0986; mean 0.8959, 2 s.e. = 0.4055
    v = ratio_verdict([0.2, 0.3], [0.01, 0.01], 10.0)
    assert v.verdict == HOLDS and v.difference == pytest.approx(0.8959, abs=1e-4)
    assert v.margin == pytest.approx(0.4055, abs=1e-4)
    assert ratio_verdict([0.03, 0.033, 0.027], [0.01] * 3, 10.0).verdict == FAILS  # ~3x, not 10x
    assert ratio_verdict([0.1, 0.1], [0.0, 0.0], 10.0).verdict == HOLDS  # the other never clipped
    assert ratio_verdict([0.1, 0.0], [0.0, 0.1], 10.0).verdict == UNRESOLVED


def _summary(label, seed, rur_first, rur_last, tcr, responses, acc):
    s = RunSummary(label, seed, steps=list(range(1, 9)))
    s.series = {paper.RUR_KEY: [rur_first] * 2 + [(rur_first + rur_last) / 2] * 4 + [rur_last] * 2,
                paper.TCR_KEY: [tcr] * 8, paper.ENTROPY_KEY: [0.5] * 8,
                paper.RESPONSES_KEY: [responses] * 8, paper.STEP_SECONDS_KEY: [3.0] * 8}
    s.greedy = [(0, 0.3), (8, acc)]
    s.sampled = [(0, 0.2), (8, acc - 0.05)]
    return s


def _runs():
    jitter = {1: 0.0, 2: 0.01, 3: -0.01}
    table = {  # label: (RUR first, RUR last, TCR, responses per step, held-out accuracy at the end)
        "dcpo": (0.72, 0.70, 0.001, 256, 0.60), "grpo": (0.90, 0.40, 0.003, 256, 0.50),
        "dapo": (0.70, 0.70, 0.02, 512, 0.55), "gspo": (0.60, 0.50, 0.15, 256, 0.52),
        "dppo": (0.60, 0.50, 0.002, 256, 0.51), "grpo_nokl": (0.90, 0.40, 0.003, 256, 0.48),
        "grpo_otm": (0.90, 0.40, 0.003, 256, 0.481), "grpo_sas": (0.90, 0.65, 0.003, 256, 0.56),
        "grpo_dac": (0.90, 0.40, 0.001, 256, 0.58)}
    runs = {label: [_summary(label, s, a, b + jitter[s], c, d, e + jitter[s]) for s in (1, 2, 3)]
            for label, (a, b, c, d, e) in table.items()}
    runs["grpo_binary"] = [_summary("grpo_binary", 1, 0.6, 0.3, 0.003, 256, 0.5)]
    return runs


def test_claims_on_made_up_runs():
    verdicts = {c.text: c.verdict for c in paper.claims(_runs())}
    assert len(verdicts) == 12
    by_start = lambda prefix: [v for t, v in verdicts.items() if t.startswith(prefix)]  # noqa: E731
    assert by_start("Table 2") == [HOLDS]  # DCPO 0.71 vs GRPO 0.65 on every seed
    assert by_start("§5.3: GRPO's RUR falls") == [HOLDS] and by_start("§5.3: late in training") == [HOLDS]
    # TCR: GRPO 3x DCPO's (not 10x), DAPO 20x; DAPO generates 2x the responses (not 3-5x)
    assert by_start("Fig. 1") == [FAILS, HOLDS]
    assert by_start("§5.3: DAPO needs") == [FAILS]
    # ablations: OTM +0.001 on seeds with identical jitter: its differences have no spread but are > 0
    assert by_start("Fig. 3: GRPO + OTM") == [HOLDS] and by_start("Fig. 3: GRPO + SAS") == [HOLDS]
    assert by_start("Fig. 3: GRPO + DAC alone exceeds") == [HOLDS]
    assert by_start("Fig. 3: full DCPO") == [HOLDS]
    best = [c for c in paper.claims(_runs()) if c.text.startswith("Fig. 3: full DCPO")][0]
    assert best.measured.endswith("beats: grpo, dapo, gspo, dppo, grpo_nokl, grpo_otm, grpo_sas, grpo_dac; "
                                  "loses to: -; unresolved against: -"), best.measured
    assert by_start("B8") == [UNRESOLVED]  # one seed of the ±1 run: a share, no verdict
    b8 = [c for c in paper.claims(_runs()) if c.text.startswith("B8")][0]
    # GRPO ternary mean RUR seed 1 = (2*0.9 + 4*0.65 + 2*0.4)/8 = 0.65; ±1 = (2*0.6+4*0.45+2*0.3)/8 = 0.45;
    # DCPO = 0.71: the reward is (0.65 - 0.45) / (0.71 - 0.45) = 77% of the gap
    assert "77% of the DCPO-vs-GRPO(±1) gap" in b8.measured


def test_tables_by_hand():
    text = paper.tables(_runs(), 4)
    # RUR %: seed 1 (2*72 + 4*71 + 2*70)/8 = 71.0, seeds 2 and 3 71.5 and 70.5 (late jitter ±1 point)
    assert "| dcpo | 3 | 71.0 ± 0.5 | 72.0 ± 0.0 | 70.0 ± 1.0 |" in text
    assert "| grpo | 0.3000 ± 0.0000 | 3.00 ± 0.00 |" in text  # TCR % and its ratio to DCPO's
    assert "| dapo | 512.0 ± 0.0 | 3.00 ± 0.00 |" in text
    assert "| grpo_binary | 1 |" in text and "| grpo_binary | 256.0 | 3.00 |" in text  # one seed: no ±
    assert paper.claims_table(paper.claims(_runs())).count("\n") == 2 + 12


def test_mean_curve_uses_the_steps_every_seed_has():
    a, b = RunSummary("x", 1), RunSummary("x", 2)
    a.greedy, b.greedy = [(0, 0.2), (8, 0.4)], [(0, 0.4)]
    assert paper.mean_curve([a, b], lambda s: tuple(zip(*s.greedy))) == ([0], [pytest.approx(0.3)])


# --------------------------------------------------------------------------------- reuse logic
@pytest.fixture
def setup(tmp_path):
    from dcpo_mcore.data import make_arithmetic_task

    train, held_out = make_arithmetic_task(tmp_path / "data", seed=1, n_train=40, n_eval=8)
    pool = tool.write_prompt_pool(train, tmp_path / "data" / "pool.parquet", 16)
    pre = type("Pre", (), {"eval_file": held_out, "rl_overrides": lambda self: []})()
    args = tool.parse_args(["--root", str(tmp_path / "root"), "--steps", "3", "--prompts", "16",
                            "--eval-interval", "2"])
    return args, pool, pre


def test_the_pool_is_the_head_of_the_training_file(tmp_path, setup):
    import pyarrow.parquet as pq

    _, pool, _ = setup
    rows = pq.read_table(pool).to_pylist()
    assert len(rows) == 16 and [r["extra_info"]["index"] for r in rows] == list(range(16))
    with pytest.raises(SystemExit, match="--prompts 99 is more than the 40 training questions"):
        tool.write_prompt_pool(tmp_path / "data" / "train.parquet", tmp_path / "p.parquet", 99)


def test_a_second_call_reuses_resumes_or_reruns(setup, monkeypatch, tmp_path):
    from dcpo_mcore.config import load_config, save_resolved_config
    from dcpo_mcore.metrics import JsonlSink

    args, pool, pre = setup
    calls = []
    monkeypatch.setattr(experiments, "run_train", lambda cfg, ov, run_dir, cwd, resumed=False:
                        calls.append((run_dir.name, resumed)) or 0)
    spec = paper.RUNS[0]
    root = Path(args.root)
    run_dir = root / spec.label / "seed1"

    def record(steps, overrides):
        cfg = load_config(args.config, overrides)
        save_resolved_config(cfg, run_dir)
        sink = JsonlSink(run_dir)
        for s in range(1, steps + 1):
            sink.log(s, {paper.TCR_KEY: 0.0})
        sink.close()

    overrides = tool.run_overrides(args, spec, 1, pool, pre, run_dir)
    assert tool.run_one(args, spec, 1, pool, pre, root, "1/1") == 0 and calls == [("seed1", False)]
    record(2, overrides)  # stopped after step 2 of 3: the same settings resume
    tool.run_one(args, spec, 1, pool, pre, root, "1/1")
    assert calls[-1] == ("seed1", True)
    record(3, overrides)  # finished: reused, no process
    tool.run_one(args, spec, 1, pool, pre, root, "1/1")
    assert len(calls) == 2
    record(3, [*overrides, "optim.lr=1e-5"])  # made with another lr: started over, its directory removed first
    marker = run_dir / "marker"
    marker.write_text("x")
    tool.run_one(args, spec, 1, pool, pre, root, "1/1")
    assert calls[-1] == ("seed1", False) and not marker.exists()


def test_a_root_with_runs_is_refused_without_reuse(tmp_path, capsys):
    (tmp_path / "root" / "dcpo").mkdir(parents=True)
    assert tool.main(["--root", str(tmp_path / "root"), "--only", "dcpo"]) == 2
    assert "already holds runs; pass --reuse" in capsys.readouterr().err


def test_each_process_records_its_commit_and_the_report_names_them(setup, monkeypatch):
    args, pool, pre = setup
    from dcpo_mcore.config import load_config, save_resolved_config

    def started(cfg, overrides, run_dir, cwd, resumed=False):  # a trainer that saved its config, then stopped
        save_resolved_config(load_config(cfg, overrides), run_dir)
        return 0

    monkeypatch.setattr(experiments, "run_train", started)
    commits = iter(["aaa", "aaa", "aaa", "bbb"])
    monkeypatch.setattr(tool, "source_commit", lambda repo: next(commits))
    root = Path(args.root)
    plan = paper.plan([1], ["dcpo", "grpo"])
    for spec, seed in plan:
        tool.run_one(args, spec, seed, pool, pre, root, "-")
    tool.run_one(args, plan[0][0], 1, pool, pre, root, "-")  # resumed under the same code: still one commit
    assert tool.run_commits(root, plan) == ["aaa"]
    assert tool.commit_line(["aaa"]) == "Code: every run was made at commit `aaa`."
    tool.run_one(args, plan[0][0], 1, pool, pre, root, "-")  # resumed later under other code
    assert (root / plan[0][0].label / "seed1" / tool.COMMITS_FILE).read_text() == "aaa\naaa\nbbb\n"
    assert tool.run_commits(root, plan) == ["aaa", "bbb"]
    assert "span several commits" in tool.commit_line(["aaa", "bbb"])
    assert tool.commit_line([]) == "Code: not recorded."


def test_source_commit_of_this_checkout_is_a_hash_or_unknown():
    got = tool.source_commit(Path(tool.__file__).resolve().parents[1])
    assert got == "unknown" or len(got.split("-")[0]) == 40
