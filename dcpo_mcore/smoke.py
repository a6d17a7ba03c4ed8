"""Algorithm smoke run: the foundation pieces, end to end, on a tiny in-process policy.

This is what `dcpo-train` runs until the Megatron engine and SGLang rollouts are wired into the trainer
(issues 3-5). It is small but real: a GRU policy answers "a+b" questions token by token as `\\boxed{N}`;
the real math verifier grades the answers in its worker pool; the configured estimator (SAS with the
persistent per-prompt store for DCPO) computes advantages; log-probs come from the vocab-parallel op
(TP = 1); the configured token objective and aggregation (DCPO + OTM by default) with global
denominators drive Adam. A short supervised warm-up first brings the policy to partial accuracy, the
pretrain -> RL path in miniature.
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
import torch.nn as nn

from dcpo_mcore.algo import GlobalCounts, advantage_stats, clip_ratios, compute_advantages, policy_loss
from dcpo_mcore.algo import PromptStatsStore
from dcpo_mcore.algo_setup import build_algorithm
from dcpo_mcore.config import TrainConfig
from dcpo_mcore.ops import vocab_parallel_logprobs
from dcpo_mcore.reward import RewardPool

log = logging.getLogger(__name__)
VOCAB = ["<eos>", "\\boxed{", "}"] + [str(d) for d in range(10)]
EOS, BOS = 0, len(VOCAB)  # BOS is an input-only token
ANSWER_LEN = 5  # \boxed{ d d } <eos>


class TinyPolicy(nn.Module):
    """h0 = tanh(E_a[a] + E_b[b]); a GRU cell emits one answer token per step."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.emb_a, self.emb_b = nn.Embedding(10, hidden), nn.Embedding(10, hidden)
        self.emb_tok = nn.Embedding(len(VOCAB) + 1, hidden)
        self.cell = nn.GRUCell(hidden, hidden)
        self.head = nn.Linear(hidden, len(VOCAB))

    def logits(self, a: torch.Tensor, b: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [N, L, V] for answer tokens [N, L]."""
        h = torch.tanh(self.emb_a(a) + self.emb_b(b))
        prev = torch.full_like(a, BOS)
        out = []
        for t in range(tokens.shape[1]):
            h = self.cell(self.emb_tok(prev), h)
            out.append(self.head(h))
            prev = tokens[:, t]
        return torch.stack(out, 1)

    @torch.no_grad()
    def generate(self, a, b, temperature: float, gen: torch.Generator | None):
        """Tokens [N, L] and response mask [N, L] (EOS included, nothing after it)."""
        h = torch.tanh(self.emb_a(a) + self.emb_b(b))
        prev = torch.full_like(a, BOS)
        done = torch.zeros_like(a, dtype=torch.bool)
        toks, mask = [], []
        for _ in range(ANSWER_LEN):
            h = self.cell(self.emb_tok(prev), h)
            logits = self.head(h)
            if temperature <= 0:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, EOS), nxt)
            toks.append(nxt)
            mask.append(~done)
            done = done | (nxt == EOS)
            prev = nxt
        return torch.stack(toks, 1), torch.stack(mask, 1)


def decode(tokens: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return ["".join(VOCAB[t] for t, m in zip(row, mrow) if m and t != EOS) for row, mrow in zip(tokens.tolist(), mask.tolist())]


def token_logprobs(policy: TinyPolicy, a, b, tokens, mask, temperature: float = 1.0):
    """Per-token log-probs [N, L] of the sampled tokens through the vocab-parallel op (TP = 1)."""
    logits = policy.logits(a, b, tokens)
    n, length, v = logits.shape
    flat_mask = mask.reshape(-1)
    lp, ent = vocab_parallel_logprobs(logits.reshape(n * length, v), tokens.reshape(-1), temperature=temperature,
                                      positions=flat_mask, return_entropy=True)
    out = torch.zeros(n * length, dtype=lp.dtype).masked_scatter(flat_mask, lp)
    entropy = torch.zeros(n * length, dtype=ent.dtype).masked_scatter(flat_mask, ent)
    return out.view(n, length), entropy.view(n, length)


def questions() -> list[tuple[int, int]]:
    return [(a, b) for a in range(10) for b in range(10)]


def answer_tokens(answer: int, boxed: bool = True) -> list[int]:
    digits = [VOCAB.index(c) for c in str(answer)]
    body = [1] + digits + [2] if boxed else digits
    return (body + [EOS] * ANSWER_LEN)[:ANSWER_LEN]


def make_teacher(seed: int):
    """A deliberately noisy teacher: on 60% of questions it holds a misconception (answers a+b+1 half the
    time, forgets the box a fifth of the time, is right 30% of the time); elsewhere it is right 80% of the
    time. Greedy decoding after imitation is wrong on the misconception questions, yet sampling still finds
    the right answer sometimes: exactly what RL against a verifier can fix."""
    rng = random.Random(seed)
    confused = set(rng.sample(questions(), 60))

    def sample(q: tuple[int, int], draw: random.Random) -> list[int]:
        a, b = q
        u = draw.random()
        p_right = 0.3 if q in confused else 0.8
        if u < p_right:
            return answer_tokens(a + b)
        if u < p_right + (0.2 if q in confused else 0.1):
            return answer_tokens(a + b, boxed=False)
        return answer_tokens(a + b + 1)

    return sample


def greedy_accuracy(policy: TinyPolicy, pairs, pool: RewardPool) -> float:
    a, b = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    toks, mask = policy.generate(a, b, temperature=0.0, gen=None)
    graded = pool.grade_batch([(txt, str(x + y)) for txt, (x, y) in zip(decode(toks, mask), pairs)])
    return sum(g.correct for g in graded) / len(pairs)


def warm_up(policy: TinyPolicy, teacher, seed: int, steps: int = 300) -> None:
    """Supervised 'pretraining' on fresh teacher samples each step (imitation of a noisy teacher)."""
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    draw = random.Random(seed + 1)
    qs = questions()
    a, b = torch.tensor([q[0] for q in qs]), torch.tensor([q[1] for q in qs])
    for _ in range(steps):
        targets = torch.tensor([teacher(q, draw) for q in qs])
        loss = nn.functional.cross_entropy(policy.logits(a, b, targets).reshape(-1, len(VOCAB)), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()


def rl_step(policy, ref_policy, opt, parts, store, pool, cfg: TrainConfig, batch_pairs, gen) -> dict:
    """One rollout -> reward -> advantage -> mini-batch updates step; returns the step's metrics."""
    n = cfg.rollout.n_samples_per_prompt
    a = torch.tensor([p[0] for p in batch_pairs]).repeat_interleave(n)
    b = torch.tensor([p[1] for p in batch_pairs]).repeat_interleave(n)
    keys = [f"add:{x}+{y}" for x, y in batch_pairs for _ in range(n)]
    tokens, mask = policy.generate(a, b, cfg.rollout.temperature, gen)
    graded = pool.grade_batch([(t, str(x + y)) for t, x, y in zip(decode(tokens, mask), a.tolist(), b.tolist())])
    rewards = torch.tensor([g.reward for g in graded])
    adv = compute_advantages(parts.spec.estimator, rewards, keys, parts.estimator_params,
                             store=store, group_size=n)
    with torch.no_grad():
        old_lp, entropy = token_logprobs(policy, a, b, tokens, mask, cfg.rollout.temperature)
        ref_lp = token_logprobs(ref_policy, a, b, tokens, mask)[0] if parts.loss.kl_coef > 0 else None
    per_micro, losses, norms = [], [], []
    rows_per_mini = cfg.algo.mini_batch_prompts * n
    for _epoch in range(cfg.algo.ppo_epochs):
        for start in range(0, len(keys), rows_per_mini):
            idx = slice(start, start + rows_per_mini)
            counts = GlobalCounts(prompts=rows_per_mini / n, responses=rows_per_mini, tokens=float(mask[idx].sum()))
            lp, _ = token_logprobs(policy, a[idx], b[idx], tokens[idx], mask[idx], cfg.rollout.temperature)
            out = policy_loss(parts.loss, lp, old_lp[idx], adv[idx], mask[idx], counts,
                              ref_logprobs=None if ref_lp is None else ref_lp[idx])
            opt.zero_grad()
            out.loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.optim.clip_grad)))
            opt.step()
            losses.append(float(out.loss.detach()))
            per_micro.append(out.clip.as_tensor())
    clip = clip_ratios(torch.stack(per_micro))
    stats = advantage_stats(adv)
    return {
        "reward/mean": float(rewards.mean()),
        "reward/correct_ratio": sum(g.correct for g in graded) / len(graded),
        "reward/format_error_ratio": sum(not g.has_box for g in graded) / len(graded),
        "adv/nonzero_ratio": float(stats["nonzero_ratio"]),
        "adv/abs_mean": float(stats["abs_mean"]),
        "clip/token_clip_ratio": float(clip["token_clip_ratio"]),
        "clip/low_ratio": float(clip["low_ratio"]),
        "clip/high_ratio": float(clip["high_ratio"]),
        "loss/policy": sum(losses) / len(losses),
        "loss/grad_norm": sum(norms) / len(norms),
        "actor/entropy": float(entropy[mask].mean()),
        "rollout/generated_responses": len(keys),
    }


def run(cfg: TrainConfig, run_dir: Path) -> dict:
    """The whole smoke run; writes metrics.jsonl and summary.json into ``run_dir``."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    qs = questions()
    parts = build_algorithm(cfg.algo)
    store = PromptStatsStore()
    policy = TinyPolicy()
    t0 = time.time()
    with RewardPool(cfg.reward.verifier, scheme=cfg.reward.scheme, num_workers=cfg.reward.num_workers,
                    timeout_s=cfg.reward.timeout_s) as pool:
        warm_up(policy, make_teacher(cfg.seed), cfg.seed)
        start_acc = greedy_accuracy(policy, qs, pool)
        print(f"[smoke] warm-up on a noisy teacher -> greedy accuracy {start_acc:.1%} on the 100 questions", flush=True)
        ref_policy = TinyPolicy()
        ref_policy.load_state_dict(policy.state_dict())
        opt = torch.optim.Adam(policy.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2),
                               eps=cfg.optim.adam_eps, weight_decay=cfg.optim.weight_decay)
        with open(run_dir / "metrics.jsonl", "w") as sink:
            for step in range(1, cfg.steps + 1):
                step_t0 = time.time()
                batch = rng.sample(qs, cfg.rollout.prompts_per_step)
                metrics = {"step": step, **rl_step(policy, ref_policy, opt, parts, store, pool, cfg, batch, gen)}
                metrics["timing/step_seconds"] = time.time() - step_t0
                sink.write(json.dumps(metrics) + "\n")
                sink.flush()
                if step % max(1, cfg.logging.log_interval) == 0 or step == cfg.steps:
                    eta = (time.time() - t0) / step * (cfg.steps - step)
                    print(f"[smoke] step {step}/{cfg.steps} eta {eta:4.0f}s reward {metrics['reward/mean']:+.3f} "
                          f"correct {metrics['reward/correct_ratio']:.1%} TCR {metrics['clip/token_clip_ratio']:.4f} "
                          f"RUR {metrics['adv/nonzero_ratio']:.1%}", flush=True)
        summary = {
            "algorithm": cfg.algo.name,
            "seed": cfg.seed,
            "greedy_acc_start": start_acc,
            "greedy_acc_end": greedy_accuracy(policy, qs, pool),
            "prompts_in_sas_store": len(store),
            "minutes": (time.time() - t0) / 60,
        }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
