"""Console progress line: pure formatting with hand-computed speeds and ETAs, resume-aware."""
import io
import math

import pytest

from dcpo_mcore.metrics.progress import (ConsoleProgress, eta_seconds, format_duration,
                                         format_progress_line)


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (42.4, "42s"), (59.6, "1m00s"), (725, "12m05s"), (3599, "59m59s"),
    (3600, "1h00m"), (16380, "4h33m"), (86399, "23h59m"), (183600, "2d03h"),
    (None, "?"), (math.nan, "?"), (math.inf, "?"), (-1, "?"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_eta_seconds():
    assert eta_seconds(12, 400, 41.2) == pytest.approx(388 * 41.2)
    assert eta_seconds(400, 400, 41.2) == 0
    assert eta_seconds(450, 400, 10.0) == 0  # past the end: never negative
    assert eta_seconds(1, 400, None) is None


def test_full_line_matches_the_documented_shape():
    metrics = {"reward/mean": 0.41, "reward/correct_ratio": 0.55, "clip/token_clip_ratio": 0.012,
               "adv/nonzero_ratio": 0.62, "loss/policy": 3.0}
    # 388 steps left * 41.2 s = 15985.6 s -> 4 h 26 min 26 s -> "4h26m"
    assert format_progress_line(12, 400, 41.2, metrics) == (
        "step 12/400 (3.0%) | 41.2 s/step | ETA 4h26m | reward 0.41 | acc 0.55 | TCR 0.012 | RUR 0.62")


def test_missing_keys_and_unknown_speed_are_omitted():
    assert format_progress_line(1, 8, None, {"adv/nonzero_ratio": 0.123456}) == "step 1/8 (12.5%) | RUR 0.123"
    assert format_progress_line(3, 8, 2.0, {}) == "step 3/8 (37.5%) | 2.0 s/step | ETA 10s"


def test_speed_is_the_mean_logged_step_time_since_start():
    buf = io.StringIO()
    prog = ConsoleProgress(400, stream=buf, start_step=10, clock=lambda: 0.0)
    prog.log(11, {"timing/step_seconds": 40.0})
    prog.log(12, {"timing/step_seconds": 42.4, "reward/mean": 0.41})
    lines = buf.getvalue().splitlines()
    # step 11: 389 * 40 = 15560 s = 4h19m20s ; step 12: mean 41.2, 388 * 41.2 = 15985.6 s = 4h26m
    assert lines == ["step 11/400 (2.8%) | 40.0 s/step | ETA 4h19m",
                     "step 12/400 (3.0%) | 41.2 s/step | ETA 4h26m | reward 0.41"]


def test_without_step_seconds_the_wall_clock_since_resume_is_used():
    now = [1000.0]
    buf = io.StringIO()
    prog = ConsoleProgress(400, stream=buf, start_step=100, clock=lambda: now[0])
    now[0] = 1300.0
    prog.log(110, {"reward/mean": 0.5})
    # 300 s for the 10 steps done in this process (not 110): 30 s/step, 290 * 30 = 8700 s = 2h25m
    assert buf.getvalue() == "step 110/400 (27.5%) | 30.0 s/step | ETA 2h25m | reward 0.5\n"
    assert prog.seconds_per_step(110) == pytest.approx(30.0)


def test_non_finite_step_time_is_ignored_and_values_still_shown():
    buf = io.StringIO()
    prog = ConsoleProgress(10, stream=buf, clock=lambda: 0.0)
    prog.log(1, {"timing/step_seconds": math.nan, "reward/mean": math.nan})
    prog.log(2, {"timing/step_seconds": 5.0})
    # step 1 falls back to the (frozen) wall clock: 0 s elapsed -> 0.0 s/step
    assert buf.getvalue().splitlines() == ["step 1/10 (10.0%) | 0.0 s/step | ETA 0s | reward nan",
                                           "step 2/10 (20.0%) | 5.0 s/step | ETA 40s"]


def test_log_interval_prints_first_every_nth_and_last_but_times_every_step():
    buf = io.StringIO()
    prog = ConsoleProgress(7, stream=buf, start_step=1, clock=lambda: 0.0, every=3)
    for step in range(2, 8):
        prog.log(step, {"timing/step_seconds": float(step)})
    lines = buf.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == ["step 2/7 (28.6%)", "step 3/7 (42.9%)",
                                                       "step 6/7 (85.7%)", "step 7/7 (100.0%)"]
    assert "4.5 s/step" in lines[-1]  # mean of 2..7: steps that were not printed still count


def test_log_interval_comes_from_the_config(tmp_path):
    from dcpo_mcore.metrics import build_sinks

    sinks = build_sinks(tmp_path, tensorboard=False, wandb=False, wandb_project="x", console=True,
                        total_steps=10, console_every=10)
    assert [type(s).__name__ for s in sinks.sinks] == ["JsonlSink", "ConsoleProgress"]
    assert sinks.sinks[1].every == 10
    sinks.close()
