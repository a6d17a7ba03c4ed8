"""``dcpo-eval``: Avg@1 / Avg@k of a model on DCPO-layout prompt files, sampled through SGLang and
graded by the math verifier. Parse, build, call :func:`dcpo_mcore.evaluation.evaluate`, report.

Exit codes: 0 ok; 2 bad input (arguments, data files, model or tokenizer directory, an output path
that cannot be written) or a server that cannot be reached or refuses the requests; 3 an SGLang
server launched here failed to start or died for good; 130 interrupted. Every failure is one line
on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from .argparsing import OneLineErrorParser

from dcpo_mcore.errors import UserError

_EPILOG = """examples:
  dcpo-eval --model Qwen2.5-Math-7B --data data/math500.parquet data/aime_2024.parquet        # Avg@1, greedy
  dcpo-eval --model Qwen2.5-Math-7B --data data/aime_2024.parquet --sample                    # Avg@32
  dcpo-eval --server-url http://node1:30000 --data data/amc2023.parquet --sample --k 8 --max-problems 10
k: greedy runs draw 1 sample per problem; --sample without --k draws as many samples as the file has
copies of each problem (32 for the shipped AIME/AMC files, 1 for MATH500), the paper's Avg@32.
outputs: the JSON summary at --out and one JSONL row per problem beside it (<out>.problems.jsonl)."""

DEFAULT_OUT = "eval_results.json"
CPU_MIN_TOTAL_TOKENS = 4096  # the CPU server's default KV pool (rollout/server.py CPU_SERVER_ARGS)


class EvalInputError(UserError):
    """A problem with the command line or its files; exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="dcpo-eval", description="Evaluate a model's Avg@1 (greedy) or Avg@k (T=1.0, top_p=1.0) "
                "on DCPO-layout .parquet/.jsonl files through SGLang, graded by the math verifier.",
                epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model and servers (give --model, --server-url, or both)")
    src.add_argument("--model", help="HF model directory: launches local SGLang server(s) on it (CPU engine when "
                     "there is no GPU); with --server-url it only provides the tokenizer")
    src.add_argument("--server-url", nargs="+", metavar="URL", help="running SGLang server(s) or one sglang-router")
    src.add_argument("--tokenizer", help="tokenizer directory (default: --model, else the server's own path)")
    src.add_argument("--num-servers", type=int, default=1, help="local servers to launch with --model (1)")
    src.add_argument("--server-args", default="", help="extra SGLang flags for launched servers, one string, "
                     "e.g. \"--max-total-tokens 8192\"; a flag here replaces our default")
    src.add_argument("--max-concurrency", type=int, default=64, help="requests in flight at once (64)")
    data = p.add_argument_group("data")
    data.add_argument("--data", nargs="+", required=True, metavar="FILE", help="prompt files (.parquet or .jsonl, "
                      "DCPO layout); each data_source is reported on its own")
    data.add_argument("--max-problems", type=int, default=None, help="only the first N problems of each dataset")
    data.add_argument("--chat-template", choices=("tokenizer", "none"), default="tokenizer",
                      help="render prompts with the tokenizer's chat template (default) or join the raw text")
    data.add_argument("--prompt-key", choices=("source_index", "prompt_hash"), default="source_index",
                      help="problem identity: data_source:extra_info.index (default) or a hash of the prompt")
    data.add_argument("--max-prompt-tokens", type=int, default=None, help="drop (and count) longer prompts")
    data.add_argument("--name", default=None, help="report everything under eval/NAME/ instead of per data_source")
    smp = p.add_argument_group("sampling")
    mode = smp.add_mutually_exclusive_group()
    mode.add_argument("--greedy", dest="sample", action="store_false", help="temperature 0, one sample: Avg@1 "
                      "(default)")
    mode.add_argument("--sample", dest="sample", action="store_true", help="T=1.0, top_p=1.0, k samples: Avg@k")
    p.set_defaults(sample=False)  # else the first action's default (--greedy's store_false: True) wins
    smp.add_argument("--k", type=int, default=None, help="samples per problem with --sample (default: the file's "
                     "copies of each problem)")
    smp.add_argument("--max-new-tokens", type=int, default=3072, help="longest response (3072, as in the paper)")
    smp.add_argument("--seed", type=int, default=0, help="sampling seed (0); honoured by GPU servers with "
                     "deterministic inference only")
    out = p.add_argument_group("grading and output")
    out.add_argument("--grader-workers", type=int, default=2, help="math-verify worker processes (2)")
    out.add_argument("--grader-timeout", type=float, default=3.0, help="seconds per answer; a timeout is wrong (3)")
    out.add_argument("--out", default=DEFAULT_OUT, help=f"summary JSON ({DEFAULT_OUT}); the per-problem JSONL "
                     "goes beside it as <stem>.problems.jsonl")
    out.add_argument("--save-responses", action="store_true", help="keep every response text in the JSONL")
    out.add_argument("--run-dir", default=None, help="where launched servers write sglang/*.log (the --out folder)")
    out.add_argument("--quiet", action="store_true", help="no progress output")
    return p


# ------------------------------------------------------------------------------------------ steps
def _check_args(args) -> tuple[list[str], Path]:
    """Everything that can be checked before anything slow starts."""
    if not args.model and not args.server_url:
        raise EvalInputError("give --model HF_DIR (launch a local server) or --server-url URL (use a running one)")
    if args.k is not None and args.k > 1 and not args.sample:
        raise EvalInputError(f"--k {args.k} needs --sample: greedy decoding gives one answer per problem")
    for flag in ("k", "max_problems", "max_new_tokens", "num_servers", "max_concurrency", "grader_workers",
                 "max_prompt_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise EvalInputError(f"--{flag.replace('_', '-')} must be >= 1, not {value}")
    if not args.grader_timeout > 0:
        raise EvalInputError(f"--grader-timeout must be > 0, not {args.grader_timeout}")
    missing = [f for f in args.data if not Path(f).is_file()]
    if missing:
        raise EvalInputError(f"data file {missing[0]} does not exist" + (f" (and {len(missing) - 1} more)"
                             if len(missing) > 1 else "") + "; pass .parquet or .jsonl files to --data")
    for flag, path in (("--model", args.model), ("--tokenizer", args.tokenizer)):
        if path and not Path(path).is_dir():
            raise EvalInputError(f"{flag} {path} is not a directory; give a Hugging Face model/tokenizer folder")
    if args.model and not args.server_url and not (Path(args.model) / "config.json").is_file():
        raise EvalInputError(f"--model {args.model} has no config.json; give a Hugging Face model folder")
    out = Path(args.out)
    if out.is_dir():
        raise EvalInputError(f"--out {out} is a directory; give a file name such as {out / DEFAULT_OUT}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvalInputError(f"cannot create the output folder {out.parent}: {exc.strerror or exc}") from exc
    return list(args.data), out


def _load_tokenizer(args, manager):
    """--tokenizer, else --model, else the path the (attached) server says it loaded."""
    path = args.tokenizer or args.model
    if path is None:
        from dcpo_mcore.rollout import EngineAdmin

        info = EngineAdmin(manager.worker_urls[0], timeout_s=30).model_info()
        path = next((p for p in (info.get("tokenizer_path"), info.get("model_path")) if p and Path(p).is_dir()), None)
        if path is None:
            raise EvalInputError(f"the server's tokenizer {info.get('tokenizer_path') or info.get('model_path')!r} is "
                                 "not a folder here; pass --tokenizer DIR")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - any loader failure is a bad tokenizer folder
        raise EvalInputError(f"cannot load a tokenizer from {path}: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}") from exc


def _launch(args, dataset, settings, run_dir: Path, say):
    """Local SGLang server(s) on --model. On CPU the KV pool must hold the longest request."""
    from dcpo_mcore.rollout import LaunchSpec, ServerManager

    extra = shlex.split(args.server_args)
    if not _has_cuda() and "--max-total-tokens" not in {a.split("=", 1)[0] for a in extra}:
        longest = max(len(r.prompt_ids) for r in dataset.records) + settings.max_new_tokens + 16
        extra = ["--max-total-tokens", str(max(CPU_MIN_TOTAL_TOKENS, longest))] + extra
    spec = LaunchSpec(model_path=str(args.model), num_servers=args.num_servers, extra_args=extra,
                      random_seed=args.seed)
    say(f"launching {args.num_servers} SGLang server(s) on {args.model} (logs: {run_dir / 'sglang'}) ...")
    t0 = time.monotonic()
    manager = ServerManager(spec, run_dir).start()
    say(f"SGLang ready in {time.monotonic() - t0:.0f} s: {', '.join(manager.worker_urls)}")
    return manager


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch: no CUDA
        return False


def _table(result) -> str:
    lines = [f"{'dataset':<24} {'metric':<14} {'value':>7} {'problems':>8} {'samples':>8} {'fmt_err':>7} "
             f"{'trunc':>6} {'len':>7}"]
    for name, d in result.datasets.items():
        m, pre = result.metrics, f"eval/{name}/"
        lines.append(f"{name:<24} {d['metric'].rsplit('/', 1)[1]:<14} {d['value']:>7.4f} {d['problems']:>8d} "
                     f"{d['samples']:>8d} {m[pre + 'format_error_ratio']:>7.3f} {m[pre + 'truncated_ratio']:>6.3f} "
                     f"{m[pre + 'response_length_mean']:>7.1f}")
    return "\n".join(lines)


def _run(args) -> int:
    from dcpo_mcore.data import load_prompt_dataset
    from dcpo_mcore.evaluation import EvalSettings, evaluate
    from dcpo_mcore.reward import RewardPool
    from dcpo_mcore.rollout import ClientOptions, RolloutClient, RolloutError, ServerManager, ServerUnreachable

    files, out = _check_args(args)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(f"[dcpo-eval] {msg}", file=sys.stderr, flush=True))
    try:
        settings = EvalSettings(k=args.k, greedy=not args.sample, max_new_tokens=args.max_new_tokens,
                                seed=args.seed, max_problems=args.max_problems)
    except ValueError as exc:
        raise EvalInputError(str(exc)) from exc
    manager, pool = None, None
    try:
        if args.server_url:  # attach first: a wrong URL fails in seconds, before the data is read
            manager = ServerManager.attach(args.server_url).start()
        tokenizer = _load_tokenizer(args, manager)
        dataset = load_prompt_dataset(files, tokenizer, prompt_key=args.prompt_key, chat_template=args.chat_template,
                                      max_prompt_tokens=args.max_prompt_tokens, dedup_replicas=True)
        say(f"{', '.join(files)}: {dataset.report.summary()}")
        if manager is None:
            manager = _launch(args, dataset, settings, Path(args.run_dir) if args.run_dir else out.parent, say)
        pool = RewardPool("math", num_workers=args.grader_workers, timeout_s=args.grader_timeout)
        client = RolloutClient(manager, ClientOptions(max_concurrency=args.max_concurrency), seed=args.seed)
        try:
            result = evaluate(client, dataset, pool, settings, tokenizer=tokenizer, progress=not args.quiet,
                              name=args.name, keep_responses=args.save_responses)
        except ServerUnreachable as exc:
            if manager.owned:  # our own server died and could not be brought back: exit 3, not 2
                raise RolloutError(str(exc)) from exc
            raise
        json_path, jsonl_path = result.write(
            out, model=args.model, tokenizer=args.tokenizer or args.model, server_urls=manager.worker_urls,
            data=files, load_report=dataset.report.to_dict())
    finally:
        if pool is not None:
            pool.close()
        if manager is not None:
            manager.shutdown()  # stops only servers launched here; attached ones are left alone
    print(_table(result))
    say(f"{result.seconds:.0f} s; wrote {json_path} and {jsonl_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return int(exc.code or 0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from dcpo_mcore.data import DataError
    from dcpo_mcore.rollout import RequestRejected, RolloutError, ServerLaunchError, ServerUnreachable

    try:
        return _run(args)
    except (EvalInputError, DataError, ServerUnreachable, RequestRejected) as exc:
        print(f"dcpo-eval: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (ServerLaunchError, RolloutError) as exc:  # the first line names the server and its log
        print(f"dcpo-eval: error: {_one_line(exc)}", file=sys.stderr)
        return 3
    except OSError as exc:  # e.g. no permission or no space for the output
        print(f"dcpo-eval: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dcpo-eval: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
