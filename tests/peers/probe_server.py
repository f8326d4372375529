#!/usr/bin/env python3
"""lodge-probe: the project's own stdio MCP test server.

Standard library only (Python 3.11). Speaks newline-delimited JSON-RPC 2.0 on stdin/stdout (the MCP
stdio transport) and logs only to stderr. Its tools misbehave on request (crash, hang, flood, garbage,
slow with progress and cancellation, ...) so tests can drive a hub's handling of real processes.

Flags:
  --exit-at-start CODE  print "probe: exiting at start" to stderr and exit CODE before reading anything
  --banner              print the non-JSON line "probe starting" on stdout before serving
  --name N              shown in serverInfo.name ("lodge-probe-N") and in whoami as "name"

Installed beside the other test peers by scripts/peers; rooms run it with /usr/bin/python3 or the
peers venv's python. One request is served at a time: while `slow` runs, other incoming messages are
queued (cancellations are acted on at once) and served after it.
"""

import argparse
import json
import os
import select
import socket
import sys
import time
import urllib.parse

SUPPORTED_VERSIONS = ("2025-06-18", "2025-03-26", "2025-11-25")
DEFAULT_VERSION = "2025-06-18"

METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INVALID_REQUEST = -32600
PARSE_ERROR = -32700
RESOURCE_NOT_FOUND = -32002


def log(msg):
    try:
        sys.stderr.write(f"probe[{os.getpid()}]: {msg}\n")
        sys.stderr.flush()
    except OSError:
        pass


class RpcError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class NoResponse(Exception):
    """The request ends without any response (it was cancelled)."""


def _schema(properties=None, required=()):
    return {"type": "object", "properties": properties or {}, "required": list(required)}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}

BASE_TOOLS = [
    {"name": "whoami", "description": "uid, gid, cwd, env, hostname, pid and argv of the server process, as JSON",
     "inputSchema": _schema()},
    {"name": "echo", "description": "Returns its text",
     "inputSchema": _schema({"text": _STR}, ["text"])},
    {"name": "fail", "description": "Returns a tool error (isError) with the message",
     "inputSchema": _schema({"message": _STR}, ["message"])},
    {"name": "crash", "description": "Exits at once with the code (default 3) without answering",
     "inputSchema": _schema({"code": _INT})},
    {"name": "hang", "description": "Blocks the whole server forever (it stops reading)",
     "inputSchema": _schema()},
    {"name": "flood", "description": "Writes one 10 MiB stdout line of 'x', then answers",
     "inputSchema": _schema()},
    {"name": "garbage", "description": "Writes the non-JSON line 'this is not json' to stdout, then answers",
     "inputSchema": _schema()},
    {"name": "slow", "description": "Sleeps for seconds in steps, with progress notifications and cancellation",
     "inputSchema": _schema({"seconds": _NUM, "steps": _INT}, ["seconds"])},
    {"name": "log", "description": "Sends a notifications/message log entry, then answers",
     "inputSchema": _schema({"message": _STR, "level": {
         "type": "string",
         "enum": ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]}},
         ["message"])},
    {"name": "change_tools", "description": "Adds the tool 'extra' and sends notifications/tools/list_changed",
     "inputSchema": _schema()},
    {"name": "cancelled_ids", "description": "JSON list of the request ids seen cancelled",
     "inputSchema": _schema()},
    {"name": "big", "description": "Returns that many 'y' characters",
     "inputSchema": _schema({"bytes": _INT}, ["bytes"])},
    {"name": "routed", "description": "Returns its region, which 2026-07-28 clients also send as a header",
     "inputSchema": _schema({"region": {"type": "string", "x-mcp-header": "Region"}}, ["region"])},
    {"name": "touch", "description": "Sends notifications/resources/updated for the URI if it is subscribed; "
     "says whether it was",
     "inputSchema": _schema({"uri": _STR}, ["uri"])},
    {"name": "ask", "description": "Asks the client (request method with params, e.g. sampling/createMessage) "
     "times times in a row, and returns the answers as a JSON list (an error answer as {\"error\": ...})",
     "inputSchema": _schema({"method": _STR, "params": {"type": "object"}, "times": _INT}, ["method"])},
]

EXTRA_TOOL = {"name": "extra", "description": "Added by change_tools; returns 'extra'", "inputSchema": _schema()}

HELLO = {"uri": "probe://hello", "name": "hello", "mimeType": "text/plain"}
ECHO_TEMPLATE = {"uriTemplate": "probe://echo/{text}", "name": "echo", "mimeType": "text/plain",
                 "description": "Reads back the text in the URI"}
GREET = {"name": "greet", "description": "Greets someone",
         "arguments": [{"name": "name", "description": "who to greet", "required": True}]}


def text_result(text, is_error=False):
    result = {"content": [{"type": "text", "text": text}]}
    if is_error:
        result["isError"] = True
    return result


class Server:
    def __init__(self, name):
        self.name = name
        self.buf = b""
        self.eof = False
        self.pending = []  # parsed messages read while a request was running
        self.cancelled = []  # request ids seen in notifications/cancelled, in order
        self.extra = False
        self.subscribed = set()  # resource URIs a client subscribed to

    # ---- transport -------------------------------------------------------------------------

    def write_raw(self, data):
        try:
            out = sys.stdout.buffer
            out.write(data)
            out.flush()
        except (BrokenPipeError, OSError):
            log("stdout closed; exiting")
            os._exit(0)

    def send(self, msg):
        self.write_raw(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def notify(self, method, params):
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def read_line(self, timeout=None):
        """The next stdin line (bytes, without newline); None at EOF or when timeout runs out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.eof:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line
                return None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                ready, _, _ = select.select([0], [], [], left)
                if not ready:
                    return None
            chunk = os.read(0, 65536)
            if not chunk:
                self.eof = True
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def parse(self, line):
        """A message dict, or None after answering a bad line."""
        line = line.strip()
        if not line:
            return None
        try:
            msg = json.loads(line)
        except ValueError:
            log(f"unparsable line: {line[:80]!r}")
            self.send({"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": "Parse error"}})
            return None
        if not isinstance(msg, dict):
            self.send({"jsonrpc": "2.0", "id": None,
                       "error": {"code": INVALID_REQUEST, "message": "Invalid Request"}})
            return None
        return msg

    def record_cancel(self, msg):
        rid = (msg.get("params") or {}).get("requestId")
        log(f"cancelled: {rid!r}")
        self.cancelled.append(rid)
        # A request still queued is dropped unanswered.
        self.pending = [m for m in self.pending
                        if not ("method" in m and "id" in m and m["id"] == rid and m["id"] is not None)]
        return rid

    def wait(self, seconds, rid):
        """Sleeps while reading stdin; True if request rid got cancelled meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            line = self.read_line(left)
            if line is None:
                if self.eof:
                    log("stdin closed during a request; exiting")
                    sys.exit(0)
                return False
            msg = self.parse(line)
            if msg is None:
                continue
            if msg.get("method") == "notifications/cancelled":
                if self.record_cancel(msg) == rid:
                    return True
            else:
                self.pending.append(msg)

    # ---- main loop ---------------------------------------------------------------------------

    def serve(self):
        while True:
            if self.pending:
                msg = self.pending.pop(0)
            else:
                line = self.read_line()
                if line is None:
                    log("stdin closed; exiting")
                    return
                msg = self.parse(line)
                if msg is None:
                    continue
            self.handle(msg)

    def handle(self, msg):
        method = msg.get("method")
        has_id = "id" in msg
        rid = msg.get("id")
        if not isinstance(method, str):
            if has_id and ("result" in msg or "error" in msg):
                return  # a response to nothing we asked; ignore
            if has_id:
                self.send({"jsonrpc": "2.0", "id": rid,
                           "error": {"code": INVALID_REQUEST, "message": "Invalid Request"}})
            return
        params = msg.get("params")
        if params is None:
            params = {}
        if not has_id:
            if method == "notifications/cancelled":
                self.record_cancel(msg)
            elif method == "notifications/initialized":
                log("initialized")
            return
        try:
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object")
            handler = self.METHODS.get(method)
            if handler is None:
                raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")
            result = handler(self, params, rid)
        except NoResponse:
            log(f"request {rid!r} ends unanswered")
            return
        except RpcError as e:
            self.send({"jsonrpc": "2.0", "id": rid, "error": {"code": e.code, "message": e.message}})
            return
        self.send({"jsonrpc": "2.0", "id": rid, "result": result})

    # ---- methods -----------------------------------------------------------------------------

    def m_initialize(self, params, rid):
        asked = params.get("protocolVersion")
        version = asked if asked in SUPPORTED_VERSIONS else DEFAULT_VERSION
        log(f"initialize: client asked {asked!r}, answering {version}")
        return {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": True}, "resources": {"subscribe": True}, "prompts": {},
                             "logging": {}, "completions": {}},
            "serverInfo": {"name": f"lodge-probe-{self.name}" if self.name else "lodge-probe", "version": "1"},
        }

    def m_ping(self, params, rid):
        return {}

    def m_set_level(self, params, rid):
        return {}

    def m_tools_list(self, params, rid):
        return {"tools": BASE_TOOLS + ([EXTRA_TOOL] if self.extra else [])}

    def m_resources_list(self, params, rid):
        return {"resources": [HELLO]}

    def m_templates_list(self, params, rid):
        return {"resourceTemplates": [ECHO_TEMPLATE]}

    def m_resources_read(self, params, rid):
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: missing 'uri'")
        if uri == HELLO["uri"]:
            text = "hello from probe"
        elif uri.startswith("probe://echo/"):
            text = urllib.parse.unquote(uri[len("probe://echo/"):])
        else:
            raise RpcError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}")
        return {"contents": [{"uri": uri, "mimeType": "text/plain", "text": text}]}

    def m_complete(self, params, rid):
        # Echoes what it was asked, so a test sees which name reached the server.
        ref = params.get("ref") or {}
        target = ref.get("name") if ref.get("type") == "ref/prompt" else ref.get("uri")
        value = (params.get("argument") or {}).get("value", "")
        return {"completion": {"values": [f"{value}:{target}"], "hasMore": False}}

    def m_subscribe(self, params, rid):
        self.subscribed.add(params.get("uri"))
        return {}

    def m_unsubscribe(self, params, rid):
        self.subscribed.discard(params.get("uri"))
        return {}

    def m_prompts_list(self, params, rid):
        return {"prompts": [GREET]}

    def m_prompts_get(self, params, rid):
        name = params.get("name")
        if name != "greet":
            raise RpcError(INVALID_PARAMS, f"Unknown prompt: {name}")
        who = (params.get("arguments") or {}).get("name")
        if not isinstance(who, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: missing required argument 'name'")
        return {"description": "Greets someone",
                "messages": [{"role": "user", "content": {"type": "text", "text": f"Hello, {who}"}}]}

    def m_tools_call(self, params, rid):
        name = params.get("name")
        args = params.get("arguments")
        if args is None:
            args = {}
        known = {t["name"] for t in BASE_TOOLS} | ({"extra"} if self.extra else set())
        if name not in known:
            raise RpcError(INVALID_PARAMS, f"Unknown tool: {name}")
        if not isinstance(args, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: arguments must be an object")
        tool = EXTRA_TOOL if name == "extra" else next(t for t in BASE_TOOLS if t["name"] == name)
        check_args(tool["inputSchema"], args)
        meta = params.get("_meta") or {}
        return getattr(self, "t_" + name)(args, rid, meta.get("progressToken"))

    # ---- tools -------------------------------------------------------------------------------

    def t_whoami(self, args, rid, token):
        return text_result(json.dumps({
            "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(), "env": dict(os.environ),
            "hostname": socket.gethostname(), "pid": os.getpid(), "argv": sys.argv, "name": self.name,
        }))

    def t_echo(self, args, rid, token):
        return text_result(args["text"])

    def t_routed(self, args, rid, token):
        return text_result(args["region"])

    def t_fail(self, args, rid, token):
        return text_result(args["message"], is_error=True)

    def t_crash(self, args, rid, token):
        code = args.get("code", 3)
        sys.stderr.write("probe: crashing\n")
        sys.stderr.flush()
        os._exit(code)

    def t_hang(self, args, rid, token):
        log("hanging forever")
        while True:
            time.sleep(3600)

    def t_flood(self, args, rid, token):
        log("flooding 10 MiB on one line")
        chunk = b"x" * (1 << 20)
        for _ in range(10):
            self.write_raw(chunk)
        self.write_raw(b"\n")
        return text_result("flooded")

    def t_garbage(self, args, rid, token):
        self.write_raw(b"this is not json\n")
        return text_result("garbage sent")

    def t_slow(self, args, rid, token):
        seconds = args["seconds"]
        steps = args.get("steps")
        if steps is None:
            steps = int(seconds * 4)
        steps = max(1, steps)
        for i in range(1, steps + 1):
            if self.wait(seconds / steps, rid):
                raise NoResponse()
            if token is not None:
                self.notify("notifications/progress",
                            {"progressToken": token, "progress": i, "total": steps, "message": f"step {i}"})
        return text_result(f"slept {seconds:g} s")

    def t_log(self, args, rid, token):
        self.notify("notifications/message",
                    {"level": args.get("level", "info"), "logger": "probe", "data": args["message"]})
        return text_result("logged")

    def t_change_tools(self, args, rid, token):
        self.extra = True
        self.notify("notifications/tools/list_changed", {})
        return text_result("changed")

    def t_cancelled_ids(self, args, rid, token):
        return text_result(json.dumps(self.cancelled))

    def t_big(self, args, rid, token):
        return text_result("y" * args["bytes"])

    def t_touch(self, args, rid, token):
        if args["uri"] not in self.subscribed:
            return text_result("not subscribed")
        self.notify("notifications/resources/updated", {"uri": args["uri"]})
        return text_result("updated")

    def t_ask(self, args, rid, token):
        answers = []
        for n in range(args.get("times", 1)):
            qid = f"probe-ask-{rid}-{n}"
            self.send({"jsonrpc": "2.0", "id": qid, "method": args["method"], "params": args.get("params", {})})
            answer = self.await_answer(qid, rid)
            if answer is None:
                raise NoResponse()
            answers.append(answer.get("result") if "result" in answer else {"error": answer.get("error")})
        return text_result(json.dumps(answers))

    def await_answer(self, qid, rid):
        """Reads stdin until the answer to our request qid; None if request rid is cancelled first."""
        while True:
            line = self.read_line()
            if line is None:
                log("stdin closed while waiting for the client's answer; exiting")
                sys.exit(0)
            msg = self.parse(line)
            if msg is None:
                continue
            if msg.get("id") == qid and "method" not in msg:
                return msg
            if msg.get("method") == "notifications/cancelled":
                if self.record_cancel(msg) == rid:
                    return None
            else:
                self.pending.append(msg)

    def t_extra(self, args, rid, token):
        return text_result("extra")

    METHODS = {
        "initialize": m_initialize,
        "ping": m_ping,
        "logging/setLevel": m_set_level,
        "tools/list": m_tools_list,
        "tools/call": m_tools_call,
        "resources/list": m_resources_list,
        "resources/templates/list": m_templates_list,
        "resources/read": m_resources_read,
        "prompts/list": m_prompts_list,
        "prompts/get": m_prompts_get,
        "completion/complete": m_complete,
        "resources/subscribe": m_subscribe,
        "resources/unsubscribe": m_unsubscribe,
    }


def check_args(schema, args):
    """Required properties present and of their declared type (bool is not a number here)."""
    for key in schema["required"]:
        if key not in args:
            raise RpcError(INVALID_PARAMS, f"Invalid params: missing required argument '{key}'")
    for key, spec in schema["properties"].items():
        if key not in args:
            continue
        value, kind = args[key], spec["type"]
        ok = {
            "string": isinstance(value, str),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
            "object": isinstance(value, dict),
        }[kind]
        if ok and kind in ("integer", "number") and value < 0:
            ok = False
        if ok and "enum" in spec and value not in spec["enum"]:
            ok = False
        if not ok:
            raise RpcError(INVALID_PARAMS, f"Invalid params: '{key}' must be a valid {kind}")


def main():
    parser = argparse.ArgumentParser(description="lodge-probe: stdio MCP test server")
    parser.add_argument("--exit-at-start", type=int, metavar="CODE")
    parser.add_argument("--banner", action="store_true")
    parser.add_argument("--name")
    opts = parser.parse_args()
    if opts.exit_at_start is not None:
        sys.stderr.write("probe: exiting at start\n")
        sys.stderr.flush()
        sys.exit(opts.exit_at_start)
    log(f"serving (uid {os.getuid()}, cwd {os.getcwd()})")
    server = Server(opts.name)
    if opts.banner:
        server.write_raw(b"probe starting\n")
    try:
        server.serve()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
