"""Which failures are the user's (exit 2, one line) and which are bugs (exit 1, traceback): nash_ds/errors.py."""

from __future__ import annotations

from nash_ds import errors
from tests.helpers import run_in_process


def test_user_error_is_a_value_error_for_callers_that_catch_those():
    assert issubclass(errors.UserError, ValueError)


def test_a_value_error_inside_a_library_during_a_stage_exits_1_with_its_traceback(monkeypatch):
    """A ValueError raised inside transformers (a bug, ours or theirs) is not reported as the user's input."""
    import transformers

    def library_bug(*args, **kwargs):
        raise ValueError("a library bug, not the user's input")

    monkeypatch.setattr(transformers.AutoModelForSeq2SeqLM, "from_config", library_bug)
    monkeypatch.setattr(transformers.T5ForConditionalGeneration, "__init__", library_bug)
    r = run_in_process("estimate", "estimate.model=t5-small", check=False)
    assert r.returncode == errors.EXIT_INTERNAL_ERROR == 1, r.stderr[-3000:]
    assert "Traceback (most recent call last)" in r.stderr and "library_bug" in r.stderr, r.stderr[-3000:]
    assert ("nash-ds: internal error in estimate (please report): ValueError: a library bug, not the user's input"
            in r.stderr.splitlines()), r.stderr[-3000:]
    assert "nash-ds: error:" not in r.stderr


def test_a_user_error_during_a_stage_exits_2_with_one_line_and_no_traceback():
    r = run_in_process("estimate", "estimate.model=t5-small", "estimate.world_size=0", check=False)
    assert r.returncode == errors.EXIT_USER_ERROR, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("nash-ds: ")]
    assert lines == ["nash-ds: error: estimate.world_size must be >= 1, got 0"], r.stderr[-3000:]


def test_an_internal_error_on_another_rank_reports_late_with_its_traceback(monkeypatch, capsys):
    from nash_ds import cli

    monkeypatch.setenv("NASH_ERROR_GRACE_S", "0")
    monkeypatch.setenv("RANK", "1")
    try:
        raise RuntimeError("boom")
    except RuntimeError as e:
        error = e
    code, late = cli._internal("prune", error, rank_zero=False)
    assert code == 1 and capsys.readouterr().err == ""
    cli._report_late(late, error, debug=True)
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("nash-ds: internal error in prune (please report): RuntimeError: "
                                               "boom [rank 1]\n")


def test_the_exit_code_survives_an_abort_in_interpreter_teardown(tmp_path):
    """run.py ends through ``cli.exit_process``: an object a library leaves for interpreter teardown that aborts the
    process there (gloo work outliving ``destroy_process_group``: SIGABRT, "terminate called without an active
    exception") must not turn a finished stage into a failed job. Python's exit handlers still run."""
    import subprocess
    import sys

    from tests.helpers import REPO

    script = f"""
import atexit, os, sys
sys.path.insert(0, {str(REPO)!r})
from nash_ds.cli import exit_process

class AbortsInTeardown:
    def __del__(self):
        os.abort()

LEFT_FOR_TEARDOWN = AbortsInTeardown()
atexit.register(lambda: open({str(tmp_path / "atexit-ran")!r}, "w").close())
print("stage output", flush=True)
if sys.argv[1] == "exit_process":
    exit_process(3)
sys.exit(3)
"""
    plain = subprocess.run([sys.executable, "-c", script, "sys.exit"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert plain.returncode != 3  # the failure this guards against: teardown aborts (-6) a finished process
    (tmp_path / "atexit-ran").unlink()
    r = subprocess.run([sys.executable, "-c", script, "exit_process"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 3, r.stderr
    assert r.stdout == "stage output\n"
    assert (tmp_path / "atexit-ran").is_file()


def test_run_py_ends_through_exit_process():
    from tests.helpers import REPO

    assert "exit_process(main())" in (REPO / "run.py").read_text()
