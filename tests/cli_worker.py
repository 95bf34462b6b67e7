"""Run ``nash_ds.cli.main`` on many command lines in one process, as ``run.py`` would (tests/test_bad_inputs.py).

    python tests/cli_worker.py cases.json results.json

Each case is ``{"id", "argv", "cwd", "watch"}``: the worker changes to ``cwd``, records every file and directory
under the ``watch`` roots (and ``$TMPDIR``), runs ``main(argv)`` with stdout / stderr captured, and records the exit
code, both streams, the seconds it took and every path that appeared, vanished or changed. An exception escaping
``main`` is printed as Python would print it (a traceback in stderr) and recorded as exit code "uncaught".
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path

LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def snapshot(roots: list[str]) -> dict[str, list]:
    """path -> [size, mtime_ns] for files, ["dir"] for directories (a directory's own mtime is not compared)."""
    out: dict[str, list] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                out[os.path.join(dirpath, name)] = ["dir"]
            for name in filenames:
                st = os.lstat(os.path.join(dirpath, name))
                out[os.path.join(dirpath, name)] = [st.st_size, st.st_mtime_ns]
    return out


def run_case(main, case: dict) -> dict:
    for key in LAUNCHER_ENV:  # every case is a fresh `python run.py ...` of one process
        os.environ.pop(key, None)
    os.chdir(case["cwd"])
    roots = [*case["watch"], os.environ["TMPDIR"]]
    before = snapshot(roots)
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(case["argv"])
        except SystemExit as e:  # argparse
            code = e.code
        except BaseException:  # noqa: BLE001 - what the interpreter would print for an escaped exception
            traceback.print_exc()
            code = "uncaught"
    seconds = time.perf_counter() - t0
    after = snapshot(roots)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "changed": changed,
            "seconds": round(seconds, 3)}


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    from nash_ds.cli import main as cli_main

    results = {case["id"]: run_case(cli_main, case) for case in cases}
    Path(sys.argv[2]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
