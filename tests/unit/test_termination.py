"""A SIGTERM is never lost (dcpo_mcore/termination.py): when the handler's SystemExit lands inside a
finalizer, Python drops it ("Exception ignored in ..."), and the step-boundary check raises it again.
Real signals, in a subprocess so pytest's own handlers are untouched."""
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import gc, os, signal, time
    from dcpo_mcore.termination import exit_cleanly_on_sigterm, raise_if_terminated

    exit_cleanly_on_sigterm()

    class Busy:
        def __del__(self):  # a finalizer that is running Python code when the signal arrives
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                pass

    Busy()  # collected at once: __del__ runs, the SystemExit raised in it is dropped
    gc.collect()
    print("the run carried on", flush=True)
    {after}
    print("not reached when the check works", flush=True)
""")


def _run(after: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(after=after)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_a_sigterm_swallowed_by_a_finalizer_is_raised_at_the_next_check():
    p = _run("raise_if_terminated()")
    assert "the run carried on" in p.stdout and "Exception ignored" in p.stderr  # the loss is real
    assert p.returncode == 143 and "not reached" not in p.stdout, (p.returncode, p.stdout, p.stderr)


def test_without_a_signal_the_check_does_nothing():
    p = subprocess.run([sys.executable, "-c", "from dcpo_mcore.termination import raise_if_terminated as r; r(); "
                        "print('ok')"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok"


def test_the_trainer_checks_at_every_step_boundary():
    from dcpo_mcore.trainer import setup

    assert "raise_if_terminated()" in Path(setup.__file__).read_text().split("def preempted", 1)[1].split("def ", 1)[0]
