"""Shared by the Python SDK test clients: logging of every HTTP exchange to stderr and
unwrapping of anyio's exception groups. Diagnostics only; no checks live here."""

from __future__ import annotations

import sys

import httpx2


class CheckFailed(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def log_response(response: httpx2.Response) -> None:
    req = response.request
    line = f"http: {req.method} {req.url} -> {response.status_code}"
    ctype = response.headers.get("content-type")
    if ctype:
        line += f" ({ctype})"
    if response.status_code >= 400:
        try:
            body = (await response.aread()).decode("utf-8", "replace")
        except Exception as exc:  # the body is only diagnostics
            body = f"<unreadable: {exc}>"
        line += f" body: {body.strip()[:500]}"
    log(line)


def first_leaf(exc: BaseException) -> BaseException:
    """anyio task groups wrap errors in ExceptionGroups; report the first real one."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
