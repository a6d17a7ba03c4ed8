"""One ``dcpo-eval`` run: check the options, attach to or launch SGLang, load the tokenizer and the
prompt files, call :func:`dcpo_mcore.eval.evaluate.evaluate`, write the JSON/JSONL and print the table.

``args`` is the namespace :func:`dcpo_mcore.cli.eval.build_parser` parses (its flags name the
attributes). A problem with the options or their files raises :class:`EvalInputError`; the command
line (:mod:`dcpo_mcore.cli.eval`) turns each failure into its one line and exit code.
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from dcpo_mcore.errors import UserError

DEFAULT_OUT = "eval_results.json"
CPU_MIN_TOTAL_TOKENS = 4096  # the CPU server's default KV pool (rollout/server.py CPU_SERVER_ARGS)


class EvalInputError(UserError):
    """A problem with the command line or its files; exit code 2."""


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


def run_eval(args) -> int:
    """The whole evaluation for parsed ``dcpo-eval`` options; 0 when written (failures raise)."""
    from dcpo_mcore.data import load_prompt_dataset
    from dcpo_mcore.reward import RewardPool
    from dcpo_mcore.rollout import ClientOptions, RolloutClient, RolloutError, ServerManager, ServerUnreachable

    from .evaluate import EvalSettings, evaluate

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
