"""``dcpo-eval``: Avg@1 / Avg@k of a model on DCPO-layout prompt files, sampled through SGLang and
graded by the math verifier. Parse, call :func:`dcpo_mcore.eval.run.run_eval`, report.

Exit codes: 0 ok; 2 bad input (arguments, data files, model or tokenizer directory, an output path
that cannot be written) or a server that cannot be reached or refuses the requests; 3 an SGLang
server launched here failed to start or died for good; 130 interrupted. Every failure is one line
on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys

from dcpo_mcore.errors import one_line
from dcpo_mcore.eval.run import DEFAULT_OUT, EvalInputError, run_eval

from .common import OneLineErrorParser

_EPILOG = """examples:
  dcpo-eval --model Qwen2.5-Math-7B --data data/math500.parquet data/aime_2024.parquet        # Avg@1, greedy
  dcpo-eval --model Qwen2.5-Math-7B --data data/aime_2024.parquet --sample                    # Avg@32
  dcpo-eval --server-url http://node1:30000 --data data/amc2023.parquet --sample --k 8 --max-problems 10
k: greedy runs draw 1 sample per problem; --sample without --k draws as many samples as the file has
copies of each problem (32 for the shipped AIME/AMC files, 1 for MATH500), the paper's Avg@32.
outputs: the JSON summary at --out and one JSONL row per problem beside it (<out>.problems.jsonl)."""


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


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return int(exc.code or 0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from dcpo_mcore.data import DataError
    from dcpo_mcore.rollout import RequestRejected, RolloutError, ServerLaunchError, ServerUnreachable

    try:
        return run_eval(args)
    except (EvalInputError, DataError, ServerUnreachable, RequestRejected) as exc:
        print(f"dcpo-eval: error: {one_line(exc, None)}", file=sys.stderr)
        return 2
    except (ServerLaunchError, RolloutError) as exc:  # the first line names the server and its log
        print(f"dcpo-eval: error: {one_line(exc, None)}", file=sys.stderr)
        return 3
    except OSError as exc:  # e.g. no permission or no space for the output
        print(f"dcpo-eval: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dcpo-eval: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
