"""Shared by the Python SDK test clients: logging of every HTTP exchange to stderr and
unwrapping of anyio's exception groups, an initialized session, and the common `main`: run a check under a deadline,
print its one JSON line, or report the first real failure. No checks live here."""

from __future__ import annotations

import json
import os
import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError


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


@asynccontextmanager
async def open_session(url: str, token: str, timeout_s: float) -> AsyncIterator[ClientSession]:
    """An initialized SDK session over streamable HTTP with `Authorization: Bearer TOKEN`.
    Leaving it sends DELETE for the session (terminate_on_close)."""
    http_client = create_mcp_http_client(
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx2.Timeout(timeout_s),
    )
    http_client.event_hooks["response"] = [log_response]
    async with http_client:
        async with streamable_http_client(url, http_client=http_client) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=timeout_s) as session:
                try:
                    init = await session.initialize()
                except MCPError as exc:
                    raise CheckFailed(f"initialize failed: {exc.error.code} {exc.error.message}") from exc
                log(f"initialized: protocol {init.protocol_version}, server {init.server_info.name}")
                yield session


def run_main(
    argv: list[str],
    run: Callable[[str, str], Awaitable[dict[str, Any]]],
    deadline_s: float,
) -> int:
    """`SCRIPT URL TOKEN`: runs `run(url, token)` within `deadline_s` and prints its result."""
    if len(argv) != 3:
        log(f"usage: {os.path.basename(argv[0])} URL TOKEN")
        return 2
    url, token = argv[1], argv[2]

    async def with_deadline() -> dict[str, Any]:
        with anyio.fail_after(deadline_s):
            return await run(url, token)

    try:
        out = anyio.run(with_deadline)
    except BaseException as exc:  # noqa: BLE001 - any failure is a failed check
        leaf = first_leaf(exc)
        if isinstance(leaf, KeyboardInterrupt):
            raise
        if isinstance(leaf, MCPError):
            msg = f"MCP error {leaf.error.code}: {leaf.error.message}"
        else:
            msg = f"{type(leaf).__name__}: {leaf}"
        log(f"FAILED against {url}: {msg}")
        return 1
    print(json.dumps(out), flush=True)
    return 0
