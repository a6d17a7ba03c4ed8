"""Calibrate the CPU demo's pretraining stage: steps / seconds to reach the held-out accuracy target.

    .venv/bin/python tools/calibrate_demo.py --config configs/demo_cpu.yaml --seed 1 --n-train 4000
    .venv/bin/python tools/calibrate_demo.py --max-steps 30 --target -1 --micro-batch-size 32   # speed only

Builds the character tokenizer and the random model of the config's ``model`` section, writes the
arithmetic task (``--n-train`` + 200 held-out), pretrains through the megatron engine
(:func:`dcpo_mcore.demo.pretraining.pretrain`) and prints one summary line plus the accuracy history.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo_cpu.yaml")
    p.add_argument("--seed", type=int, default=1, help="task, model and data-order seed")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-eval", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--packed", action="store_true")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--target", type=float, default=0.35, help="stop at this held-out accuracy (< 0: never)")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-seconds", type=float, default=900.0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--work-dir", default=None, help="keep the model and data here (default: a temp dir)")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from dcpo_mcore.config.loader import load_config
    from dcpo_mcore.data import arith_alphabet, make_arithmetic_task
    from dcpo_mcore.demo import make_char_tokenizer, make_demo_model
    from dcpo_mcore.demo.pretraining import PretrainSettings, pretrain, records_from_files

    cfg = load_config(args.config)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dcpo-calib-"))
    t0 = time.perf_counter()
    tok = make_char_tokenizer(None, arith_alphabet(), model_max_length=cfg.model.max_position_embeddings)
    hf = make_demo_model(work / "init", cfg.model, tok, seed=args.seed)
    train_file, eval_file = make_arithmetic_task(work / "data", seed=args.seed, n_train=args.n_train,
                                                 n_eval=args.n_eval)
    train, held_out = records_from_files(tok, train_file), records_from_files(tok, eval_file)
    print(f"setup {time.perf_counter() - t0:.1f} s: vocab {len(tok)}, {len(train)} train / {len(held_out)} "
          f"held-out, torch threads {torch.get_num_threads()}", flush=True)
    settings = PretrainSettings(
        batch_size=args.batch_size, micro_batch_size=args.micro_batch_size, packed=args.packed, lr=args.lr,
        target_accuracy=None if args.target < 0 else args.target, eval_every=args.eval_every,
        max_steps=args.max_steps, max_seconds=args.max_seconds, seed=args.seed)
    res = pretrain(hf, work / "pretrained", train, held_out, settings, log=lambda m: print(m, flush=True))
    summary = {"seed": args.seed, "n_train": args.n_train, "steps": res.steps, "seconds": round(res.seconds, 1),
               "train_seconds": round(res.train_seconds, 1), "eval_seconds": round(res.eval_seconds, 1),
               "s_per_step": round(res.seconds_per_step, 4), "cpu_s_per_step": round(res.cpu_seconds_per_step, 4),
               "final_accuracy": res.final_accuracy,
               "reached_target": res.reached_target, "stop_reason": res.stop_reason, "history": res.history,
               "threads": torch.get_num_threads(), "micro_batch_size": args.micro_batch_size,
               "packed": args.packed, "out_dir": str(res.out_dir)}
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
