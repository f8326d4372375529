#!/usr/bin/env python3
"""Third-party client check of upstream servers: the official Python `mcp` SDK (2.x) calls tools
of the hub's per-user upstream servers (mcp-server-git and server-everything, offered as
`{server}__{tool}`) alongside its built-in tools.

Usage: python upstream_client.py URL TOKEN

Initializes a ClientSession over the SDK's streamable HTTP transport (Authorization: Bearer TOKEN),
makes the user's workspace a git repository with an untracked a.txt (`run_command`; until then
mcp-server-git refuses to start, so tools are listed only after it), lists tools, calls
`git__git_status`, `everything__echo`, and `everything__trigger-long-running-operation` with a
progress callback, and prints ONE JSON line to stdout:

    {"tools": [...], "git_status": "...", "echo": "...",
     "progress": [[progress, total, message], ...], "long_result": "..."}

Every HTTP exchange is logged to stderr ("http: METHOD URL -> STATUS"), with the body of any
error response. Any failure exits non-zero with a message on stderr.
"""

from __future__ import annotations

import sys
from typing import Any

from mcp import ClientSession
from mcp.shared.exceptions import MCPError
from sdk_support import CheckFailed, open_session, run_main

OVERALL_TIMEOUT_S = 90
HTTP_TIMEOUT_S = 30

GIT_SETUP = "git init -q . && git config user.email a@x && git config user.name a && echo hi > a.txt"


async def call_ok(session: ClientSession, name: str, args: dict[str, Any], **kw: Any) -> Any:
    """Calls a tool that must succeed; returns its result."""
    try:
        result = await session.call_tool(name, args, **kw)
    except MCPError as exc:
        raise CheckFailed(f"{name}: MCP error {exc.error.code}: {exc.error.message}") from exc
    if getattr(result, "is_error", False):
        raise CheckFailed(f"{name} returned an error result: {result.model_dump_json()}")
    if not hasattr(result, "content"):
        raise CheckFailed(f"{name} returned no tool result: {result.model_dump_json()}")
    return result


def text_of(name: str, result: Any) -> str:
    """The concatenated text content of a tool result, which must have some."""
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    if not texts:
        raise CheckFailed(f"{name} returned no text content: {result.model_dump_json()}")
    return "\n".join(texts)


async def run(url: str, token: str) -> dict[str, Any]:
    async with open_session(url, token, HTTP_TIMEOUT_S) as session:

        # mcp-server-git --repository /workspace exits at start unless /workspace is a git
        # repository (and the hub then lists none of its tools): make it one first.
        setup = await call_ok(session, "run_command", {"command": GIT_SETUP})
        exit_code = (setup.structured_content or {}).get("exit_code")
        if exit_code not in (None, 0):
            raise CheckFailed(f"git setup exited {exit_code}: {setup.model_dump_json()}")

        listed = await session.list_tools()
        tools = [t.name for t in listed.tools]
        for want in ("session_info", "git__git_status", "everything__echo",
                     "everything__trigger-long-running-operation"):
            if want not in tools:
                raise CheckFailed(f"tools/list has no {want}: {tools}")

        status = await call_ok(session, "git__git_status", {"repo_path": "/workspace"})
        git_status = text_of("git__git_status", status)

        echo_result = await call_ok(session, "everything__echo", {"message": "sdk"})
        echo = text_of("everything__echo", echo_result)

        progress: list[Any] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append([value, total, message])

        long = await call_ok(
            session,
            "everything__trigger-long-running-operation",
            {"duration": 2, "steps": 4},
            progress_callback=on_progress,
        )
        long_result = text_of("everything__trigger-long-running-operation", long)
    # Leaving the session sends DELETE for it (terminate_on_close).
    return {
        "tools": tools,
        "git_status": git_status,
        "echo": echo,
        "progress": progress,
        "long_result": long_result,
    }


if __name__ == "__main__":
    sys.exit(run_main(sys.argv, run, OVERALL_TIMEOUT_S))
