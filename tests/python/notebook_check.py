#!/usr/bin/env python3
"""Third-party check of a notebook file that Lodge wrote: PyPI nbformat must read and validate it,
and `jupyter nbconvert --to notebook --execute` must run it and keep its structure.

Usage: python notebook_check.py [--allow-errors] [--kernel-name NAME] NOTEBOOK

Run it with the Python of the test peers' jupyter venv (scripts/peers installs nbformat, nbconvert,
jupyter_client and ipykernel there). It needs nothing else: stdlib, nbformat and nbconvert.

1. nbformat.read(NOTEBOOK, as_version=4) and nbformat.validate (the validation error on failure).
2. `python -m nbconvert --to notebook --execute` into a temp dir, with the same interpreter, a cell
   timeout of 60 s and the kernelspec NAME (default python3), found first in this venv's
   share/jupyter. JUPYTER_DATA_DIR, JUPYTER_RUNTIME_DIR, JUPYTER_CONFIG_DIR and IPYTHONDIR point
   into the temp dir, so it works with an unwritable or odd HOME and ignores the caller's own
   kernelspecs and config. A cell that raises fails the check unless --allow-errors is given.
3. The executed notebook must have the same cells as the input, in order: same count, cell_type,
   source and id.

Prints ONE JSON line to stdout and exits 0 if ok, 1 if not (2 on bad usage):

    {"ok": true, "cells": N, "code_cells": M, "executed_counts": [...],
     "input_counts": [...], "error": ""}

executed_counts are the code cells' execution counts after nbconvert ran them; input_counts are the
ones stored in NOTEBOOK. nbconvert's own output goes to stderr only when it fails (its tail is
also in "error").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

import nbformat

CELL_TIMEOUT_S = 60
# nbconvert's own start and the kernel's start, on top of the cells' time.
STARTUP_S = 120
STDERR_TAIL_LINES = 30
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class CheckFailed(Exception):
    pass


def validation_text(exc: Exception) -> str:
    """A short validation error: jsonschema's message and where, not its schema dump."""
    message = getattr(exc, "message", None)
    if not message:
        text = str(exc)
        return text if len(text) <= 2000 else text[:2000] + " …"
    path = getattr(exc, "absolute_path", None) or getattr(exc, "path", ())
    where = "/".join(str(p) for p in path)
    return f"{message} (at /{where})" if where else str(message)


def read_valid(path: str, what: str) -> Any:
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # nbformat raises several kinds (JSON, version, reader) errors
        raise CheckFailed(f"{what}: nbformat.read failed: {type(exc).__name__}: {exc}") from exc
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        raise CheckFailed(f"{what}: nbformat.validate failed: {validation_text(exc)}") from exc
    return nb


def code_counts(nb: Any) -> list[Any]:
    return [c.get("execution_count") for c in nb.cells if c.get("cell_type") == "code"]


def execute(path: str, tmp: str, kernel_name: str, allow_errors: bool, code_cells: int) -> str:
    """Runs nbconvert --execute on path; returns the executed notebook's path."""
    env = dict(os.environ)
    for var, sub in (
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTER_CONFIG_DIR", "config"),
        ("IPYTHONDIR", "ipython"),
    ):
        env[var] = os.path.join(tmp, sub)
        os.makedirs(env[var], mode=0o700, exist_ok=True)
    # This venv's kernelspecs first (its python3 runs this venv's ipykernel), then the defaults.
    env["JUPYTER_PATH"] = os.path.join(sys.prefix, "share", "jupyter")
    env["JUPYTER_PLATFORM_DIRS"] = "1"  # jupyter_core's own default soon; silences its warning
    env.pop("JUPYTER_CONFIG_PATH", None)

    out_dir = os.path.join(tmp, "out")
    os.makedirs(out_dir)
    cmd = [
        sys.executable,
        "-m",
        "nbconvert",
        "--to",
        "notebook",
        "--execute",
        f"--ExecutePreprocessor.timeout={CELL_TIMEOUT_S}",
        f"--ExecutePreprocessor.kernel_name={kernel_name}",
        "--output-dir",
        out_dir,
        "--output",
        "out",
    ]
    if allow_errors:
        cmd.append("--allow-errors")
    cmd.append(path)
    timeout = STARTUP_S + CELL_TIMEOUT_S * max(code_cells, 1)
    try:
        proc = subprocess.run(
            cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"nbconvert --execute did not finish in {timeout} s") from exc
    out = os.path.join(out_dir, "out.ipynb")
    if proc.returncode != 0 or not os.path.isfile(out):
        sys.stderr.write(proc.stderr)
        # From nbclient's CellExecutionError on (the cell and its traceback) when there is one.
        lines = ANSI.sub("", proc.stderr).strip().splitlines()
        starts = [i for i, line in enumerate(lines) if "CellExecutionError:" in line]
        tail = "\n".join(lines[starts[-1] :] if starts else lines[-STDERR_TAIL_LINES:])
        raise CheckFailed(f"nbconvert --execute exited {proc.returncode}: {tail}")
    return out


def compare(before: Any, after: Any) -> None:
    """The executed notebook must have the input's cells: count, type, source and id, in order."""
    if len(before.cells) != len(after.cells):
        raise CheckFailed(
            f"cell count changed: {len(before.cells)} in the input, {len(after.cells)} executed"
        )
    for i, (a, b) in enumerate(zip(before.cells, after.cells)):
        for key in ("cell_type", "source", "id"):
            if a.get(key) != b.get(key):
                raise CheckFailed(
                    f"cell {i}: {key} changed: {json.dumps(a.get(key))} in the input, "
                    f"{json.dumps(b.get(key))} executed"
                )


def check(path: str, kernel_name: str, allow_errors: bool, report: dict[str, Any]) -> None:
    nb = read_valid(path, "input")
    report["cells"] = len(nb.cells)
    report["code_cells"] = sum(1 for c in nb.cells if c.get("cell_type") == "code")
    report["input_counts"] = code_counts(nb)
    with tempfile.TemporaryDirectory(prefix="notebook-check-") as tmp:
        out = execute(path, tmp, kernel_name, allow_errors, report["code_cells"])
        executed = read_valid(out, "executed notebook")
    report["executed_counts"] = code_counts(executed)
    compare(nb, executed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook")
    parser.add_argument("--kernel-name", default="python3")
    parser.add_argument("--allow-errors", action="store_true")
    args = parser.parse_args()

    report: dict[str, Any] = {
        "ok": False,
        "cells": 0,
        "code_cells": 0,
        "executed_counts": [],
        "input_counts": [],
        "error": "",
    }
    try:
        check(os.path.abspath(args.notebook), args.kernel_name, args.allow_errors, report)
        report["ok"] = True
    except CheckFailed as exc:
        report["error"] = str(exc)
    except Exception as exc:  # one JSON line whatever happens
        report["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
