#!/usr/bin/env python3
"""Third-party client check: talk to a Lodge hub with the official Python `mcp` SDK (2.x).

Usage: python mcp_sdk_client.py URL TOKEN

Initializes a ClientSession over the SDK's streamable HTTP transport (Authorization: Bearer TOKEN),
lists tools (must include `session_info`), calls `session_info` with `{}`, writes and reads a file
in the user's room, runs a 2.5 s command with a progress callback, and prints ONE JSON line to
stdout:

    {"protocol": ..., "tools": [...], "session_info": {...}, "file": "...",
     "command": {...}, "progress": [[progress, total, message], ...]}

Every HTTP exchange is logged to stderr ("http: METHOD URL -> STATUS"), with the body of any
error response. Any failure exits non-zero with a message on stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from mcp import ClientSession
from sdk_support import CheckFailed, open_session, run_main

OVERALL_TIMEOUT_S = 60
HTTP_TIMEOUT_S = 20


async def run(url: str, token: str) -> dict[str, Any]:
    async with open_session(url, token, HTTP_TIMEOUT_S) as session:
        protocol = session.protocol_version

        listed = await session.list_tools()
        tools = [t.name for t in listed.tools]
        if "session_info" not in tools:
            raise CheckFailed(f"tools/list has no session_info: {tools}")

        result = await session.call_tool("session_info", {})
        if result.is_error:
            raise CheckFailed(f"session_info returned an error result: {result.model_dump_json()}")
        info = result.structured_content
        if info is None:
            texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
            if not texts:
                raise CheckFailed(f"session_info returned neither structuredContent nor text: {result}")
            try:
                info = json.loads(texts[0])
            except json.JSONDecodeError as exc:
                raise CheckFailed(f"session_info text is not JSON: {texts[0]!r}") from exc
        file, command, progress = await room_calls(session, info["user"])
    # Leaving the session sends DELETE for it (terminate_on_close).
    return {
        "protocol": protocol,
        "tools": tools,
        "session_info": info,
        "file": file,
        "command": command,
        "progress": progress,
    }


async def structured(session: ClientSession, name: str, args: dict[str, Any], **kw: Any) -> Any:
    result = await session.call_tool(name, args, **kw)
    if result.is_error:
        raise CheckFailed(f"{name} returned an error result: {result.model_dump_json()}")
    if result.structured_content is None:
        raise CheckFailed(f"{name} returned no structuredContent: {result}")
    return result.structured_content


async def room_calls(session: ClientSession, user: str) -> tuple[str, Any, list[Any]]:
    """Files and a command in the user's room; the command streams progress (SSE)."""
    await structured(session, "fs_write", {"path": "sdk.txt", "content": f"written by {user}"})
    page = await structured(session, "fs_read", {"path": "sdk.txt"})
    progress: list[Any] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append([value, total, message])

    command = await structured(
        session,
        "run_command",
        {"command": "sleep 2.5; cat sdk.txt"},
        progress_callback=on_progress,
    )
    return page["content"], command, progress


if __name__ == "__main__":
    sys.exit(run_main(sys.argv, run, OVERALL_TIMEOUT_S))
