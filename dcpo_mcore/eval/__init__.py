"""Evaluation: Avg@1 / Avg@k of held-out math problems sampled through SGLang and graded by the verifier.

* evaluate.py: the metric itself (:func:`evaluate`, the definitions of problem, k and Avg@k), used by the
  trainer's periodic evaluation and by ``dcpo-eval``.
* run.py: one ``dcpo-eval`` run over prompt files (servers, tokenizer, data, output files); its command
  line is :mod:`dcpo_mcore.cli.eval`.
"""
from .evaluate import (EvalResult, EvalSettings, ProblemResult, dataset_name, evaluate, evaluate_async,
                       metric_label, plan_problems, summarize)

__all__ = ["EvalResult", "EvalSettings", "ProblemResult", "dataset_name", "evaluate", "evaluate_async",
           "metric_label", "plan_problems", "summarize"]
