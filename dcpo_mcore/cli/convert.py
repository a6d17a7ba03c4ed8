"""``dcpo-convert``: HF <-> Megatron (torch_dist) checkpoint conversion. Parse, call :mod:`dcpo_mcore.convert.api`, report.

Exit codes: 0 ok; 1 a self-check failed (--verify, --check-logprobs, check-logprobs); 2 bad input
(arguments, missing files, unsupported architecture, layout, corrupt checkpoint); 3 a rank crashed or
timed out (its log is kept and named). Every failure is one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from .common import OneLineErrorParser

_EPILOG = """examples:
  dcpo-convert hf-to-mcore --hf Qwen2.5-7B --out ckpt/qwen7b --tp 2 --pp 2 --verify --check-logprobs
  dcpo-convert mcore-to-hf --ckpt ckpt/qwen7b --out export/qwen7b --tp 1 --pp 1
  dcpo-convert check-logprobs --ckpt ckpt/qwen7b --hf Qwen2.5-7B
  dcpo-convert mcore-to-hf --ckpt runs/my_rl_run --out export/rl_policy     # a dcpo-train run's newest checkpoint
ranks: TP*PP local worker processes are started automatically (gloo on CPU, nccl on GPU); under
torchrun/srun (RANK and WORLD_SIZE set) every launched process is one rank instead."""


def _layout_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--tp", type=int, default=None, help=f"tensor-parallel size ({default})")
    p.add_argument("--pp", type=int, default=None, help=f"pipeline-parallel size ({default})")
    p.add_argument("--vpp", type=int, default=None, help="virtual pipeline chunks per PP rank (needs --pp >= 2)")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=0, help="kill the ranks after this many seconds (0: never)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _lp_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tol", type=float, default=1e-4, help="max abs log-prob difference allowed (1e-4)")
    p.add_argument("--num-seqs", type=int, default=4, help="random sequences (4)")
    p.add_argument("--seq-len", type=int, default=32, help="tokens per sequence (32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids (0)")


_CKPT_HELP = ("checkpoint written by hf-to-mcore, or by dcpo-train: RUN_DIR/checkpoints/step_N, or RUN_DIR "
              "for its newest valid checkpoint")
_HF_CONFIG_HELP = ("directory with the HF config.json and tokenizer files to use (default: the checkpoint's "
                   "hf/, or for a dcpo-train checkpoint the run's model.hf_path)")


def build_parser() -> argparse.ArgumentParser:
    root = OneLineErrorParser(prog="dcpo-convert", description="Convert checkpoints between Hugging Face and "
                   "megatron-core distributed (torch_dist) format.", epilog=_EPILOG,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = root.add_subparsers(dest="cmd", required=True, parser_class=OneLineErrorParser)
    a = sub.add_parser("hf-to-mcore", help="HF safetensors -> Megatron torch_dist checkpoint")
    a.add_argument("--hf", required=True, help="HF checkpoint directory (config.json + *.safetensors)")
    a.add_argument("--out", required=True, help="checkpoint directory to create (must not exist or be empty)")
    _layout_args(a, "default 1")
    a.add_argument("--verify", action="store_true", help="round-trip HF -> Megatron -> HF and require "
                   "every tensor to be byte-identical")
    a.add_argument("--check-logprobs", action="store_true", help="compare Megatron and HF float32 log-probs")
    _lp_args(a)
    _run_args(a)
    b = sub.add_parser("mcore-to-hf", help="Megatron torch_dist checkpoint -> HF safetensors")
    b.add_argument("--ckpt", required=True, help=_CKPT_HELP)
    b.add_argument("--hf-config", default=None, help=_HF_CONFIG_HELP)
    b.add_argument("--out", required=True, help="HF directory to create (must not exist or be empty)")
    _layout_args(b, "default: the layout the checkpoint was written at")
    b.add_argument("--max-shard-size", default="2GB", help="largest safetensors file (2GB)")
    _run_args(b)
    c = sub.add_parser("check-logprobs", help="compare a checkpoint's Megatron log-probs with an HF model")
    c.add_argument("--ckpt", required=True, help=_CKPT_HELP)
    c.add_argument("--hf-config", default=None, help=_HF_CONFIG_HELP)
    c.add_argument("--hf", required=True, help="HF checkpoint directory to compare against")
    _layout_args(c, "default: the layout the checkpoint was written at")
    _lp_args(c)
    _run_args(c)
    return root


def _dispatch(args) -> None:
    from dcpo_mcore.convert import api
    from dcpo_mcore.convert.hf_io import parse_size

    run = api.RunOptions(timeout_s=args.timeout or None, progress=not args.quiet)
    given = None if args.tp is None and args.pp is None and args.vpp is None else \
        api.Layout(args.tp or 1, args.pp or 1, args.vpp)
    if args.cmd == "hf-to-mcore":
        lp = _lp(api, args) if args.check_logprobs else None
        api.hf_to_mcore(args.hf, args.out, given or api.Layout(), verify=args.verify, logprobs=lp, run=run)
    elif args.cmd == "mcore-to-hf":
        api.mcore_to_hf(args.ckpt, args.out, given, max_shard_bytes=parse_size(args.max_shard_size),
                        hf_config=args.hf_config, run=run)
    else:
        api.check_checkpoint_logprobs(args.ckpt, args.hf, given, check=_lp(api, args), hf_config=args.hf_config,
                                      run=run)


def _lp(api, args):
    from dcpo_mcore.convert.errors import ConvertError

    if args.num_seqs < 1 or args.seq_len < 1 or not args.tol >= 0:
        raise ConvertError("--num-seqs and --seq-len must be >= 1 and --tol >= 0")
    return api.LogprobCheck(tol=args.tol, num_seqs=args.num_seqs, seq_len=args.seq_len, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return int(exc.code or 0)
    from dcpo_mcore.convert.errors import ConvertError, RankCrash, VerifyError
    from dcpo_mcore.errors import one_line

    try:
        _dispatch(args)
    except (ConvertError, VerifyError, RankCrash) as exc:
        print(f"dcpo-convert: error: {one_line(exc, None)}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # e.g. no permission or no space for the output
        print(f"dcpo-convert: error: {exc}", file=sys.stderr)
        return ConvertError.exit_code
    except KeyboardInterrupt:
        print("dcpo-convert: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
