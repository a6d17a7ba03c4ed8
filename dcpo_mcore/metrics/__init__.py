"""Metrics: typed sinks for the once-per-step metric dict, the JSONL history, progress and plots.

The trainer builds its sinks once (:func:`build_sinks`, from the ``logging`` config) and calls
``sinks.log(step, metrics)`` once per step with namespaced keys (docs/architecture.md [conv-metric-keys]; the
standard ones are documented in :data:`METRIC_KEYS`). ``RUN_DIR/metrics.jsonl`` is always written
and is the source of truth; TensorBoard, W&B and the console line are views on it. ``dcpo-report``
(:mod:`.report`) turns one or more run directories into PNG plots and a markdown summary.

Nothing here imports torch, tensorboard, wandb or matplotlib at import time: each is loaded only
by the sink or the plot that needs it.
"""
from .history import METRICS_FILE, MetricsFileError, held_out_accuracy_series, read_metrics
from .keys import METRIC_KEYS
from .progress import ConsoleProgress, format_duration, format_progress_line
from .sinks import (JsonlSink, MetricSink, MultiSink, TensorBoardSink, WandbSink, build_sinks,
                    set_aside_previous_record)

__all__ = [
    "METRICS_FILE", "METRIC_KEYS", "ConsoleProgress", "JsonlSink", "MetricSink", "MetricsFileError",
    "MultiSink", "TensorBoardSink", "WandbSink", "build_sinks", "format_duration",
    "format_progress_line", "held_out_accuracy_series", "read_metrics", "set_aside_previous_record",
]
