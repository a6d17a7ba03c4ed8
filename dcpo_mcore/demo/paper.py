"""The paper's claims on the CPU demo task: which runs make the experiment, what each run's metrics say,
the across-seed numbers, and one verdict per claim (tools/reproduce_paper.py writes docs/fidelity.md).

Pure bookkeeping over metrics records; nothing here starts a process or reads a file.

The verdict rule (docs/fidelity.md says it too): a claim "X > Y" is tested on the per-seed differences
d_s = X_s - Y_s (the runs of one seed share the data order and the start). With mean d and standard
error se = sd(d) / sqrt(n), it *holds* when d > 2 se, *does not hold* when d < -2 se, and is *not
resolvable at this scale* otherwise, or with fewer than two seeds. A ratio claim ("10x lower") is the
same test on log(ratio) - log(claimed factor).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Iterable, Sequence

RUR_KEY = "adv/nonzero_ratio"
TCR_KEY = "clip/token_clip_ratio"
ENTROPY_KEY = "actor/entropy"
RESPONSES_KEY = "rollout/generated_responses"
STEP_SECONDS_KEY = "timing/step_seconds"

HOLDS, FAILS, UNRESOLVED = "holds", "does not hold", "not resolvable at this scale"


@dataclass(frozen=True)
class RunSpec:
    """One arm of the experiment: a label, the overrides that make it, and what it stands for."""

    label: str
    overrides: tuple[str, ...]
    group: str  # "method", "ablation" or "reward"
    what: str
    every_seed: bool = True  # False: the first seed only


RUNS: tuple[RunSpec, ...] = (
    RunSpec("dcpo", ("algo.name=dcpo",), "method", "DCPO: SAS + DAC + OTM"),
    RunSpec("grpo", ("algo.name=grpo",), "method", "GRPO with its KL (beta 0.001)"),
    # DAPO's 512-token overlong buffer cannot fit 16-token responses, and any rescaled buffer would give
    # DAPO alone another reward; it keeps clip-higher, dynamic sampling and token-mean.
    RunSpec("dapo", ("algo.name=dapo", "algo.overlong_buffer_len=0"), "method",
            "DAPO: clip-higher, dynamic sampling, token-mean (overlong shaping off)"),
    RunSpec("gspo", ("algo.name=gspo",), "method", "GSPO: one clipped ratio per sequence"),
    RunSpec("dppo", ("algo.name=dppo",), "method", "DPPO Binary-TV: a trust region on p - q"),
    RunSpec("grpo_nokl", ("algo.name=grpo", "algo.kl_coef=0"), "ablation", "GRPO without KL: the ablations' base"),
    RunSpec("grpo_otm", ("algo.name=grpo", "algo.kl_coef=0", "algo.aggregation=otm"), "ablation", "GRPO + OTM"),
    RunSpec("grpo_sas", ("algo.name=grpo_sas",), "ablation", "GRPO + SAS"),
    RunSpec("grpo_dac", ("algo.name=grpo_dac",), "ablation", "GRPO + DAC"),
    RunSpec("grpo_binary", ("algo.name=grpo", "reward.scheme=binary"), "reward",
            "GRPO with the +-1 reward (bug B8 of the authors' code: their baselines had it)", every_seed=False),
)
LABELS = tuple(r.label for r in RUNS)


def plan(seeds: Sequence[int], only: Iterable[str] | None = None) -> list[tuple[RunSpec, int]]:
    """(run, seed) pairs in execution order: seed-major, so a stopped call leaves whole seeds done."""
    if not seeds:
        raise ValueError("at least one seed is needed")
    chosen = set(LABELS if only is None else only)
    unknown = sorted(chosen - set(LABELS))
    if unknown:
        raise ValueError(f"unknown run label(s) {', '.join(unknown)}; valid: {', '.join(LABELS)}")
    return [(r, s) for i, s in enumerate(seeds) for r in RUNS if r.label in chosen and (r.every_seed or i == 0)]


@dataclass
class RunSummary:
    """One run's per-step series, read from its metrics records."""

    label: str
    seed: int
    steps: list[int] = field(default_factory=list)
    series: dict[str, list[float]] = field(default_factory=dict)  # key -> value per training step
    greedy: list[tuple[int, float]] = field(default_factory=list)  # (step, Avg@1) per evaluation
    sampled: list[tuple[int, float]] = field(default_factory=list)  # (step, Avg@k)

    def mean(self, key: str, part: str = "all") -> float:
        """Mean of a per-step series over all steps, or its first or last quarter (at least one step)."""
        values = self.series[key]
        q = max(1, len(values) // 4)
        chosen = {"all": values, "first": values[:q], "last": values[-q:]}[part]
        return sum(chosen) / len(chosen)

    def total(self, key: str) -> float:
        return sum(self.series[key])

    def accuracy_after_start(self, which: str) -> float:
        """Mean held-out accuracy over the evaluations after step 0 (the paper averages Avg@32 over steps
        20-400 for its ablation); NaN without any."""
        points = [v for s, v in (self.greedy if which == "greedy" else self.sampled) if s > 0]
        return sum(points) / len(points) if points else math.nan


def summarise_run(label: str, seed: int, records: Sequence[dict], dataset: str, k: int) -> RunSummary:
    """The series of one run. A step recorded twice (a run resumed from a checkpoint re-runs the steps
    after it) keeps its last record."""
    by_step: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    for r in records:
        step = int(r["step"])
        if TCR_KEY in r:
            by_step[step] = r
        if f"eval/{dataset}/avg@1" in r:
            evals[step] = r
    out = RunSummary(label, seed, steps=sorted(by_step))
    for key in (RUR_KEY, TCR_KEY, ENTROPY_KEY, RESPONSES_KEY, STEP_SECONDS_KEY):
        out.series[key] = [float(by_step[s].get(key, math.nan)) for s in out.steps]
    for s in sorted(evals):
        out.greedy.append((s, float(evals[s][f"eval/{dataset}/avg@1"])))
        sampled_key = f"eval/{dataset}/avg@{k}" if k > 1 else f"eval/{dataset}/avg@1_sampled"
        if k and sampled_key in evals[s]:
            out.sampled.append((s, float(evals[s][sampled_key])))
    return out


# ------------------------------------------------------------------------------------- statistics
def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    """'m ± sd' over seeds ('m' alone for one seed)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    m, sd = mean_sd([v * scale for v in values])
    return f"{m:.{digits}f}" if len(values) == 1 else f"{m:.{digits}f} ± {sd:.{digits}f}"


@dataclass(frozen=True)
class Verdict:
    verdict: str
    difference: float  # mean of the per-seed differences (log ratios for ratio claims)
    margin: float  # 2 standard errors (nan with one seed)
    n: int


def paired_verdict(xs: Sequence[float], ys: Sequence[float]) -> Verdict:
    """Test "x > y" on per-seed pairs (the module docstring's rule)."""
    diffs = [x - y for x, y in zip(xs, ys) if not (math.isnan(x) or math.isnan(y))]
    if not diffs:
        return Verdict(UNRESOLVED, math.nan, math.nan, 0)
    d = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return Verdict(UNRESOLVED, d, math.nan, 1)
    margin = 2 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    verdict = HOLDS if d > margin else FAILS if d < -margin else UNRESOLVED
    return Verdict(verdict, d, margin, len(diffs))


def ratio_verdict(numerators: Sequence[float], denominators: Sequence[float], factor: float) -> Verdict:
    """Test "numerator / denominator >= factor" per seed, on the log scale. A zero denominator (say a
    method that never clipped) counts as an unbounded ratio."""
    logs = []
    for a, b in zip(numerators, denominators):
        if b <= 0.0:
            logs.append(math.inf if a > 0 else 0.0)
        elif a <= 0.0:
            logs.append(-math.inf)
        else:
            logs.append(math.log(a / b))
    finite = [x for x in logs if math.isfinite(x)]
    if len(finite) < len(logs):  # an unbounded ratio: decided by the sign alone when all agree
        if all(x == math.inf for x in logs):
            return Verdict(HOLDS, math.inf, math.nan, len(logs))
        if all(x == -math.inf for x in logs):
            return Verdict(FAILS, -math.inf, math.nan, len(logs))
        return Verdict(UNRESOLVED, math.nan, math.nan, len(logs))
    return paired_verdict(finite, [math.log(factor)] * len(finite))


def all_of(verdicts: Sequence[Verdict]) -> str:
    """A claim made of several comparisons: holds if all hold, fails if any fails."""
    if any(v.verdict == FAILS for v in verdicts):
        return FAILS
    return HOLDS if verdicts and all(v.verdict == HOLDS for v in verdicts) else UNRESOLVED


# ------------------------------------------------------------------------------------------ report
def _by_seed(runs: dict[str, list[RunSummary]], label: str, value) -> dict[int, float]:
    return {r.seed: value(r) for r in runs.get(label, [])}


def _paired(runs, a: str, b: str, value) -> tuple[list[float], list[float]]:
    """Values of runs a and b on the seeds both have, in seed order."""
    xa, xb = _by_seed(runs, a, value), _by_seed(runs, b, value)
    seeds = sorted(set(xa) & set(xb))
    return [xa[s] for s in seeds], [xb[s] for s in seeds]


def _values(runs, label: str, value) -> list[float]:
    return [value(r) for r in sorted(runs.get(label, []), key=lambda r: r.seed)]


def _rur(part="all"):
    return lambda r: r.mean(RUR_KEY, part)


def _tcr(r):
    return r.mean(TCR_KEY)


def _responses_per_step(r):
    return r.total(RESPONSES_KEY) / len(r.steps)


def _seconds_per_step(r):
    return r.total(STEP_SECONDS_KEY) / len(r.steps)


def _sampled_acc(r):
    return r.accuracy_after_start("sampled")


def _describe(v: Verdict, unit: str = "") -> str:
    if math.isnan(v.difference):
        return "no data"
    if math.isinf(v.difference):
        return "unbounded ratio (a zero denominator) on every seed"
    margin = "one seed" if math.isnan(v.margin) else f"± {v.margin:.3g} (2 s.e., {v.n} seeds)"
    return f"difference {v.difference:+.3g}{unit} {margin}"


@dataclass(frozen=True)
class Claim:
    text: str  # what the paper says
    measured: str
    verdict: str
    why: str


def claims(runs: dict[str, list[RunSummary]]) -> list[Claim]:
    """Each claim of the paper that these runs can speak to, with its verdict (module docstring rule)."""
    out: list[Claim] = []

    def add(text, verdict: Verdict | str, measured: str, why: str = ""):
        v = verdict if isinstance(verdict, str) else verdict.verdict
        if not why and isinstance(verdict, Verdict):
            why = _describe(verdict)
        out.append(Claim(text, measured, v, why))

    def have(*labels):
        return all(runs.get(label) for label in labels)

    if have("dcpo", "grpo"):
        xs, ys = _paired(runs, "dcpo", "grpo", _rur())
        add("Table 2: DCPO's mean RUR is far above GRPO's (71.8% vs 43.8%, 4-model average)",
            paired_verdict(xs, ys), f"DCPO {fmt(xs, 100, 1)}%, GRPO {fmt(ys, 100, 1)}%")
        first, last = _values(runs, "grpo", _rur("first")), _values(runs, "grpo", _rur("last"))
        add("§5.3: GRPO's RUR falls as training goes on (from >90% to <50%)", paired_verdict(first, last),
            f"GRPO first quarter {fmt(first, 100, 1)}%, last quarter {fmt(last, 100, 1)}%")
        xs, ys = _paired(runs, "dcpo", "grpo", _rur("last"))
        add("§5.3: late in training DCPO keeps a much higher RUR (≈70%) than GRPO", paired_verdict(xs, ys),
            f"last quarter: DCPO {fmt(xs, 100, 1)}%, GRPO {fmt(ys, 100, 1)}%")
    for other in ("grpo", "dapo"):
        if have("dcpo", other):
            theirs, ours = _paired(runs, other, "dcpo", _tcr)
            ratios = [a / b if b > 0 else math.inf for a, b in zip(theirs, ours)]
            add(f"Fig. 1: DCPO's TCR is an order of magnitude below {other.upper()}'s",
                ratio_verdict(theirs, ours, 10.0),
                f"TCR {other.upper()} {fmt(theirs, 100, 3)}%, DCPO {fmt(ours, 100, 3)}%; ratio {fmt(ratios, 1, 1)}x",
                "tested: ratio >= 10 on the log scale")
    if have("dapo", "dcpo"):
        theirs, ours = _paired(runs, "dapo", "dcpo", _responses_per_step)
        add("§5.3: DAPO needs 3-5x the generated responses of DCPO per update step",
            ratio_verdict(theirs, ours, 3.0),
            f"responses per step: DAPO {fmt(theirs, 1, 0)}, DCPO {fmt(ours, 1, 0)}", "tested: ratio >= 3")
    base = "grpo_nokl"
    for arm, name in (("grpo_otm", "OTM"), ("grpo_sas", "SAS"), ("grpo_dac", "DAC")):
        if have(arm, base):
            xs, ys = _paired(runs, arm, base, _sampled_acc)
            add(f"Fig. 3: GRPO + {name} alone beats GRPO (no KL) in held-out sampled accuracy",
                paired_verdict(xs, ys), f"{fmt(xs, 100, 1)}% vs {fmt(ys, 100, 1)}%")
    if have("grpo_dac", "grpo_nokl", "dapo", "gspo"):
        parts = [paired_verdict(*_paired(runs, "grpo_dac", o, _sampled_acc)) for o in ("grpo_nokl", "dapo", "gspo")]
        add("Fig. 3: GRPO + DAC alone exceeds GRPO, DAPO and GSPO", all_of(parts),
            "; ".join(f"vs {o}: {_describe(p)}" for o, p in zip(("GRPO", "DAPO", "GSPO"), parts)),
            "must hold against all three")
    others = [r for r in LABELS if r not in ("dcpo", "grpo_binary") and runs.get(r)]
    if runs.get("dcpo") and others:
        parts = [paired_verdict(*_paired(runs, "dcpo", o, _sampled_acc)) for o in others]
        add("Fig. 3: full DCPO is the best of all variants", all_of(parts),
            f"DCPO {fmt(_values(runs, 'dcpo', _sampled_acc), 100, 1)}%; "
            + "; ".join(f"{word}: {', '.join(o for o, p in zip(others, parts) if p.verdict == v) or '-'}"
                        for word, v in (("beats", HOLDS), ("loses to", FAILS), ("unresolved against", UNRESOLVED))),
            "must hold against every other run")
    if have("grpo", "grpo_binary", "dcpo"):
        ternary, binary = _paired(runs, "grpo", "grpo_binary", _rur())
        dcpo = _by_seed(runs, "dcpo", _rur())[runs["grpo_binary"][0].seed]
        gap = dcpo - binary[0]
        share = (ternary[0] - binary[0]) / gap if gap else math.nan
        add("B8: part of the published RUR gap comes from the reward alone (baselines had ±1, DCPO ternary)",
            UNRESOLVED if len(binary) < 2 else paired_verdict(ternary, binary).verdict,
            f"GRPO RUR ternary {ternary[0]:.1%}, ±1 {binary[0]:.1%}; DCPO (ternary) {dcpo:.1%}: the reward "
            f"alone is {share:.0%} of the DCPO-vs-GRPO(±1) gap (seed {runs['grpo_binary'][0].seed})",
            "one seed of the ±1 run: a measured share, no verdict")
    return out


def tables(runs: dict[str, list[RunSummary]], k: int) -> str:
    """The markdown tables of docs/fidelity.md (all values mean ± sd over seeds)."""
    labels = [r.label for r in RUNS if runs.get(r.label)]

    def stat(value, scale, digits):
        return lambda label: fmt(_values(runs, label, value), scale, digits)

    def tcr_ratio(label):
        theirs, ours = _paired(runs, label, "dcpo", _tcr)
        return fmt([a / b if b > 0 else math.inf for a, b in zip(theirs, ours)], 1, 2) if ours else "-"

    specs = [
        ("RUR (Table 2 analogue)", [
            ("seeds", lambda label: str(len(runs[label]))), ("mean RUR %", stat(_rur(), 100, 1)),
            ("first quarter %", stat(_rur("first"), 100, 1)), ("last quarter %", stat(_rur("last"), 100, 1))]),
        ("TCR (Fig. 1 analogue, paper Eq. 9)", [
            ("mean TCR %", stat(_tcr, 100, 4)), ("TCR / DCPO's", tcr_ratio)]),
        ("Cost per update step (efficiency)", [
            ("responses generated per step", stat(_responses_per_step, 1, 1)),
            ("seconds per step", stat(_seconds_per_step, 1, 2))]),
        (f"Held-out accuracy (Fig. 3 analogue): greedy Avg@1 and sampled Avg@{k}", [
            ("Avg@1 at step 0 %", stat(lambda r: r.greedy[0][1] if r.greedy else math.nan, 100, 1)),
            ("Avg@1 at the end %", stat(lambda r: r.greedy[-1][1] if r.greedy else math.nan, 100, 1)),
            ("mean Avg@1 after step 0 %", stat(lambda r: r.accuracy_after_start("greedy"), 100, 1)),
            (f"mean Avg@{k} after step 0 %", stat(_sampled_acc, 100, 1))]),
        ("Entropy (Fig. 7 analogue): mean token entropy of the policy", [
            ("first quarter", stat(lambda r: r.mean(ENTROPY_KEY, "first"), 1, 3)),
            ("last quarter", stat(lambda r: r.mean(ENTROPY_KEY, "last"), 1, 3))]),
    ]
    lines: list[str] = []
    for title, columns in specs:
        lines += [f"### {title}", "", "| run | " + " | ".join(h for h, _ in columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        lines += ["| " + " | ".join([label, *(cell(label) for _, cell in columns)]) + " |" for label in labels]
        lines.append("")
    return "\n".join(lines)


def claims_table(found: Sequence[Claim]) -> str:
    rows = ["| claim (paper) | measured here | verdict | why |", "|---|---|---|---|"]
    rows += [f"| {c.text} | {c.measured} | **{c.verdict}** | {c.why} |" for c in found]
    return "\n".join(rows) + "\n"


def mean_curve(summaries: Sequence[RunSummary], get) -> tuple[list[int], list[float]]:
    """The across-seed mean of a per-step curve, on the steps every seed has. ``get(summary)`` gives
    (steps, values)."""
    per_seed = [dict(zip(*get(s))) for s in summaries]
    steps = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed else []
    return steps, [sum(d[s] for d in per_seed) / len(per_seed) for s in steps]
