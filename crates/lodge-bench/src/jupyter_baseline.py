#!/usr/bin/env python3
"""The Jupyter bench's baseline: `1+1` on a python3 kernel driven directly by PyPI jupyter_client,
with no hub in between. `lodge bench` embeds this file and runs it with the Python of the test
peers' jupyter venv (scripts/peers), then compares with `code_execute "1+1"` through the hub.

Usage: python jupyter_baseline.py --iterations N --warmup W

1. Cold: from KernelManager(kernel_name="python3").start_kernel() through the blocking client's
   start_channels() and wait_for_ready() to the first result of `1+1`.
2. W warm-up round trips, then N timed ones. A round trip runs from sending execute_request to
   holding both its execute_reply (shell) and its execute_result and status idle (iopub).
3. Prints ONE JSON line to stdout, then shuts the kernel down cleanly:

    {"cold_ms": 812.4, "samples_us": [412, 398, ...]}

samples_us holds all N samples, in order, as whole microseconds (time.perf_counter_ns).
The kernelspec is looked up in this venv's share/jupyter first; JUPYTER_DATA_DIR,
JUPYTER_RUNTIME_DIR, JUPYTER_CONFIG_DIR and IPYTHONDIR point into a temp dir, so an unwritable or
odd HOME does not matter. The kernel's own output is kept in the temp dir and shown only on
failure (ipykernel warns on every start that TCP is unencrypted). Any failure exits non-zero with
a message on stderr and no JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import time

TIMEOUT_S = 60.0
CODE = "1+1"
EXPECTED = "2"


class BaselineFailed(Exception):
    pass


def use_private_jupyter_dirs(tmp: str) -> None:
    """Jupyter's writable dirs in tmp, and this venv's kernelspecs first. Before jupyter_client
    is imported, so nothing reads the caller's HOME."""
    for var, sub in (
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTER_CONFIG_DIR", "config"),
        ("IPYTHONDIR", "ipython"),
    ):
        path = os.path.join(tmp, sub)
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.environ[var] = path
    os.environ["JUPYTER_PATH"] = os.path.join(sys.prefix, "share", "jupyter")
    os.environ["JUPYTER_PLATFORM_DIRS"] = "1"
    os.environ.pop("JUPYTER_CONFIG_PATH", None)


def round_trip(kc) -> None:  # kc: jupyter_client.BlockingKernelClient
    """Executes CODE and returns once its execute_reply, execute_result and idle status are in."""
    msg_id = kc.execute(CODE)
    deadline = time.monotonic() + TIMEOUT_S
    result = None
    idle = False
    while not idle:
        msg = kc.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.001))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "execute_result":
            result = msg["content"]["data"].get("text/plain")
        elif kind == "error":
            content = msg["content"]
            raise BaselineFailed(f"{CODE} raised {content.get('ename')}: {content.get('evalue')}")
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
    while True:
        reply = kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.001))
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    if reply["content"].get("status") != "ok":
        raise BaselineFailed(f"execute_reply status {reply['content'].get('status')!r}")
    if result != EXPECTED:
        raise BaselineFailed(f"{CODE} gave execute_result {result!r}, expected {EXPECTED!r}")


def run(iterations: int, warmup: int, tmp: str, kernel_log) -> dict:
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")
    kc = None
    try:
        t0 = time.perf_counter_ns()
        km.start_kernel(cwd=tmp, stdin=subprocess.DEVNULL, stdout=kernel_log, stderr=kernel_log)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=TIMEOUT_S)
        round_trip(kc)
        cold_ms = (time.perf_counter_ns() - t0) / 1e6

        for _ in range(warmup):
            round_trip(kc)
        samples_us = []
        for _ in range(iterations):
            start = time.perf_counter_ns()
            round_trip(kc)
            samples_us.append(round((time.perf_counter_ns() - start) / 1000))
        return {"cold_ms": round(cold_ms, 3), "samples_us": samples_us}
    finally:
        if kc is not None:
            kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=0)
    args = parser.parse_args()
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be at least 1 and --warmup at least 0")

    with tempfile.TemporaryDirectory(prefix="lodge-jupyter-baseline-") as tmp:
        use_private_jupyter_dirs(tmp)
        with open(os.path.join(tmp, "kernel.log"), "w+b") as kernel_log:
            try:
                report = run(args.iterations, args.warmup, tmp, kernel_log)
            except Exception as exc:  # ours, jupyter_client's RuntimeError and the rest
                if isinstance(exc, BaselineFailed):
                    message = str(exc)
                elif isinstance(exc, queue.Empty):  # the blocking client's get_*_msg timed out
                    message = f"no answer from the kernel in {TIMEOUT_S:.0f} s"
                else:
                    message = f"{type(exc).__name__}: {exc}"
                print(f"jupyter baseline: {message}", file=sys.stderr)
                kernel_log.seek(0)
                output = kernel_log.read().decode(errors="replace").strip()
                if output:
                    print(f"jupyter baseline: the kernel's output:\n{output}", file=sys.stderr)
                return 1
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
