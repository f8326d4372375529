#!/usr/bin/env python3
"""lodge-conformance: the project's stdio MCP server for the official conformance suite's server scenarios.

Standard library only (Python 3.11). Newline-delimited JSON-RPC 2.0 on stdin/stdout (the MCP stdio
transport); logs only to stderr. Written from what the suite's scenarios check: its `test_*` tools,
prompts, `test://` resources and template, completions, subscriptions, list_changed triggers, caching
hints, logging and progress. A hub configured with it (`prefix = ""`) lets the suite's fixture
scenarios run through the hub's relay.

It speaks two families, chosen by the `initialize` it receives:
- protocolVersion "2026-07-28" (modern): every later request's params._meta carries
  io.modelcontextprotocol/protocolVersion, .../clientCapabilities (the calling client's own) and
  optionally .../logLevel. What a tool needs from the client comes back as an input_required result
  (inputRequests + a signed requestState) and completes when retried with inputResponses; a missing
  client capability is -32021; logs are sent only when logLevel is set. Every result carries
  resultType. List changes and resource updates go only to the subscriptions/listen requests
  that asked for them, tagged with their subscriptionId (resources/subscribe and ping are gone).
- any other version (legacy, sessionful): it answers the newest of 2025-11-25 / 2025-06-18 it was
  asked for, sends real server-to-client requests (sampling/createMessage, elicitation/create,
  roots/list) over stdout and waits for their answers on stdin, logs per logging/setLevel and
  reports progress for the request's progressToken.

Requests are served concurrently (one thread each) so a tool waiting for the client never stalls the
others. Installed beside the other test peers by scripts/peers.
"""

import base64
import hashlib
import hmac
import json
import os
import secrets
import struct
import sys
import threading
import time
import zlib

MODERN = "2026-07-28"
LEGACY = ("2025-11-25", "2025-06-18")  # newest first

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
LEGACY_RESOURCE_NOT_FOUND = -32002
MISSING_CAPABILITY = -32021

LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]

# How long a legacy tool waits for the client to answer one server-to-client request.
CLIENT_ANSWER_TIMEOUT = 60.0

META = "io.modelcontextprotocol/"


def log(msg):
    try:
        sys.stderr.write(f"conformance[{os.getpid()}]: {msg}\n")
        sys.stderr.flush()
    except OSError:
        pass


class RpcError(Exception):
    def __init__(self, code, message, data=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self):
        err = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class ToolError(Exception):
    """The tool ran and failed: a result with isError, not a JSON-RPC error."""


class InputRequired(Exception):
    """Modern mode: the request needs answers from the client first."""

    def __init__(self, requests, state):
        super().__init__("input required")
        self.requests = requests
        self.state = state


class Cancelled(Exception):
    """The client cancelled the request: it ends without a response."""


# ---- media made here, so nothing binary is checked in ----------------------------------------


def _png_1x1_red():
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte + one red pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _wav_silence(samples=80, rate=8000):
    data = b"\x80" * samples  # 8-bit unsigned mono silence
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate, 1, 8)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


PNG_B64 = base64.b64encode(_png_1x1_red()).decode()
WAV_B64 = base64.b64encode(_wav_silence()).decode()


# ---- catalog --------------------------------------------------------------------------------


def _schema(properties=None, required=()):
    return {"type": "object", "properties": properties or {}, "required": list(required)}


_STR = {"type": "string"}

JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"address": {"$anchor": "addressDef", "type": "object",
                          "properties": {"street": _STR, "city": _STR}}},
    "properties": {
        "name": _STR,
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": _STR,
        "email": _STR,
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}

# name -> (description, inputSchema); the handler is the Server method t_<name>.
TOOLS = {
    "test_simple_text": ("Returns one text block", _schema()),
    "test_image_content": ("Returns a 1x1 PNG image", _schema()),
    "test_audio_content": ("Returns a short WAV clip", _schema()),
    "test_embedded_resource": ("Returns an embedded text resource", _schema()),
    "test_multiple_content_types": ("Returns text, image and an embedded resource", _schema()),
    "test_resource_link": ("Returns a resource_link to test://static-text", _schema()),
    "test_structured_content": ("Returns structuredContent matching its outputSchema", _schema()),
    "test_echo": ("Returns its text", _schema({"text": _STR}, ["text"])),
    "test_tool_with_logging": ("Logs three info messages ~50 ms apart, then answers", _schema()),
    "test_logging_tool": ("Logs one info message, then answers", _schema()),
    "test_tool_with_progress": ("Reports progress 0, 50, 100 of 100 ~50 ms apart", _schema()),
    "test_error_handling": ("Always fails with isError", _schema()),
    "test_slow": ("Sleeps for seconds (cancellable), reporting progress each step",
                  _schema({"seconds": {"type": "number", "minimum": 0}}, ["seconds"])),
    "test_reconnection": ("Takes ~300 ms, then answers (for SSE polling through a hub)", _schema()),
    "test_sampling": ("Asks the client for an LLM completion of the prompt",
                      _schema({"prompt": _STR}, ["prompt"])),
    "test_elicitation": ("Asks the user for a username and an email",
                         _schema({"message": _STR}, ["message"])),
    "test_elicitation_url": ("Asks the user to visit a URL (URL-mode elicitation)", _schema()),
    "test_elicitation_sep1034_defaults": ("Elicits a form whose fields all have defaults", _schema()),
    "test_elicitation_sep1330_enums": ("Elicits a form with all five enum shapes", _schema()),
    "test_streaming_elicitation": ("Elicits a confirmation while reporting progress", _schema()),
    "test_list_roots": ("Asks the client for its roots", _schema()),
    "test_missing_capability": ("Needs the client's sampling capability", _schema()),
    "test_trigger_tool_change": ("Toggles test_dynamic_tool and sends tools/list_changed", _schema()),
    "test_trigger_prompt_change": ("Toggles test_dynamic_prompt and sends prompts/list_changed", _schema()),
    "test_trigger_resource_update": (
        "Changes test://watched-resource; subscribers get resources/updated", _schema()),
    "test_custom_header_param": (
        "Echoes region, which clients also send as the Mcp-Param-Region header",
        _schema({"region": {"type": "string", "x-mcp-header": "Region"}}, ["region"])),
    "json_schema_2020_12_tool": ("Tool with JSON Schema 2020-12 features", JSON_SCHEMA_2020_12),
    "test_input_required_result_elicitation": ("Asks for the user's name, then greets", _schema()),
    "test_input_required_result_sampling": ("Asks the client's LLM a question", _schema()),
    "test_input_required_result_list_roots": ("Asks for the client's roots", _schema()),
    "test_input_required_result_request_state": (
        "Asks for a confirmation; the retry must echo requestState", _schema()),
    "test_input_required_result_multiple_inputs": (
        "Asks for an elicitation, a sampling and the roots at once", _schema()),
    "test_input_required_result_multi_round": ("Asks two questions in two rounds", _schema()),
    "test_input_required_result_tampered_state": (
        "Asks for a confirmation; a tampered requestState is refused", _schema()),
    "test_input_required_result_capabilities": (
        "Asks only for what the client declared (sampling, elicitation)", _schema()),
}
DYNAMIC_TOOL = ("test_dynamic_tool", "Present while test_trigger_tool_change has toggled it on", _schema())

STRUCTURED_OUTPUT = {"type": "object", "properties": {"sum": {"type": "integer"}}, "required": ["sum"]}

PROMPTS = {
    "test_simple_prompt": ("A prompt without arguments", []),
    "test_prompt_with_arguments": ("A prompt with two required arguments", [
        {"name": "arg1", "description": "First test argument", "required": True},
        {"name": "arg2", "description": "Second test argument", "required": True}]),
    "test_prompt_with_embedded_resource": ("A prompt embedding a resource", [
        {"name": "resourceUri", "description": "URI of the resource to embed", "required": True}]),
    "test_prompt_with_image": ("A prompt with an image", []),
    "test_input_required_result_prompt": ("A prompt that first asks the user for context", []),
}
DYNAMIC_PROMPT = ("test_dynamic_prompt", "Present while test_trigger_prompt_change has toggled it on", [])

STATIC_TEXT = "This is the content of the static text resource."
RESOURCES = [
    {"uri": "test://static-text", "name": "static-text", "title": "Static text",
     "description": "A static text resource", "mimeType": "text/plain"},
    {"uri": "test://static-binary", "name": "static-binary", "title": "Static binary",
     "description": "A 1x1 PNG image", "mimeType": "image/png"},
    {"uri": "test://watched-resource", "name": "watched-resource", "title": "Watched resource",
     "description": "Changes on test_trigger_resource_update; subscribable", "mimeType": "text/plain"},
    {"uri": "test://example-resource", "name": "example-resource", "title": "Example resource",
     "description": "Text for prompts that embed a resource", "mimeType": "text/plain"},
]
TEMPLATE = {"uriTemplate": "test://template/{id}/data", "name": "template-data", "title": "Data by id",
            "description": "JSON data for the id in the URI", "mimeType": "application/json"}

COMPLETIONS = {
    ("ref/prompt", "test_prompt_with_arguments", "arg1"): ["paris", "park", "party", "test-value"],
    ("ref/prompt", "test_prompt_with_arguments", "arg2"): ["red", "green", "blue"],
    ("ref/resource", TEMPLATE["uriTemplate"], "id"): ["1", "2", "3", "123"],
}

# What each server-to-client method needs the client to have declared.
NEEDS_CAPABILITY = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation",
                    "roots/list": "roots"}

# Caching hints (2026-07-28) per method: lists that the triggers change are never cached.
CACHE_HINTS = {"tools/list": 0, "prompts/list": 0, "resources/list": 60000,
               "resources/templates/list": 60000}


def text(t):
    return {"type": "text", "text": t}


def text_result(t, is_error=False):
    r = {"content": [text(t)]}
    if is_error:
        r["isError"] = True
    return r


def elicit_form(message, properties, required=()):
    return ("elicitation/create", {"message": message, "requestedSchema": _schema(properties, required)})


def sampling(prompt, max_tokens=100):
    return ("sampling/createMessage", {
        "messages": [{"role": "user", "content": text(prompt)}], "maxTokens": max_tokens})


ROOTS = ("roots/list", {})


def describe_elicit(answer):
    return f"action={answer.get('action')}, content={json.dumps(answer.get('content'))}"


def sampled_text(answer):
    content = answer.get("content")
    if isinstance(content, list):
        content = next((c for c in content if isinstance(c, dict) and c.get("type") == "text"), {})
    return content.get("text", "") if isinstance(content, dict) else ""


def check_answer(key, method, answer):
    """A client's answer to one of our requests, refused (-32602) when it has the wrong shape."""
    ok = isinstance(answer, dict)
    if ok and method == "elicitation/create":
        ok = answer.get("action") in ("accept", "decline", "cancel")
    elif ok and method == "sampling/createMessage":
        ok = "content" in answer
    elif ok and method == "roots/list":
        ok = isinstance(answer.get("roots"), list)
    if not ok:
        raise RpcError(INVALID_PARAMS, f"Invalid params: inputResponses.{key} is not a valid {method} result")


class StateSigner:
    """requestState is JSON signed with a per-process HMAC key: the server trusts only its own."""

    def __init__(self):
        self.key = secrets.token_bytes(32)

    def sign(self, payload):
        body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()
        mac = hmac.new(self.key, body.encode(), hashlib.sha256).hexdigest()
        return f"{body}.{mac}"

    def verify(self, state):
        if not isinstance(state, str) or "." not in state:
            return None
        body, _, mac = state.rpartition(".")
        want = hmac.new(self.key, body.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, want):
            return None
        try:
            return json.loads(base64.urlsafe_b64decode(body.encode()))
        except ValueError:
            return None


class Call:
    """One request being served: its mode, the client's capabilities and log level, and the ways
    back to the client (logs, progress, questions)."""

    def __init__(self, server, rid, method, params):
        self.server = server
        self.rid = rid
        self.method = method
        self.params = params
        self.modern = server.modern
        meta = params.get("_meta")
        meta = meta if isinstance(meta, dict) else {}
        self.progress_token = meta.get("progressToken")
        if self.modern:
            caps = meta.get(META + "clientCapabilities")
            self.caps = caps if isinstance(caps, dict) else {}
            level = meta.get(META + "logLevel")
            self.level = level if level in LEVELS else None
        else:
            self.caps = server.client_caps
            self.level = server.level
        self.state_ok = False  # a valid requestState came with this request
        self.answers = {}
        self.fresh = {}
        if self.modern:
            self._read_input()

    # -- modern input handling --

    def _read_input(self):
        subject = self.params.get("name")
        if "requestState" in self.params:
            payload = self.server.signer.verify(self.params["requestState"])
            if payload is None or payload.get("method") != self.method or payload.get("name") != subject:
                raise RpcError(INVALID_PARAMS, "Invalid params: requestState failed its integrity check")
            self.answers = dict(payload.get("answers") or {})
            self.state_ok = True
        if "inputResponses" in self.params:
            fresh = self.params["inputResponses"]
            if not isinstance(fresh, dict):
                raise RpcError(INVALID_PARAMS, "Invalid params: inputResponses must be an object")
            self.fresh = fresh

    def require(self, capability):
        """Modern: -32021 naming the capability when the client did not declare it."""
        if not isinstance(self.caps.get(capability), dict):
            if self.modern:
                raise RpcError(MISSING_CAPABILITY, f"Missing required client capability: {capability}",
                               {"requiredCapabilities": {capability: {}}})
            raise ToolError(f"the client does not support {capability}")

    def ask(self, requests):
        """Asks the client every (method, params) of `requests` (key -> request); returns key -> answer.
        Legacy: real requests over stdout, one after another. Modern: answers from inputResponses
        (and earlier rounds in requestState), else InputRequired for the missing ones."""
        for method, _ in requests.values():
            self.require(NEEDS_CAPABILITY[method])
        if not self.modern:
            return {key: self.server.request_client(self, method, params)
                    for key, (method, params) in requests.items()}
        got, missing = {}, {}
        for key, (method, params) in requests.items():
            if key in self.answers:
                got[key] = self.answers[key]
            elif key in self.fresh:
                check_answer(key, method, self.fresh[key])
                got[key] = self.answers[key] = self.fresh[key]
            else:
                missing[key] = {"method": method, "params": params}
        if missing:
            state = self.server.signer.sign({"method": self.method, "name": self.params.get("name"),
                                             "answers": self.answers, "nonce": secrets.token_hex(8)})
            raise InputRequired(missing, state)
        return got

    def ask1(self, key, request):
        return self.ask({key: request})[key]

    # -- notifications --

    def log(self, level, data, logger="conformance"):
        """Sent only at or above the level the client set (modern: only when it set one)."""
        if self.level is None:
            if self.modern:
                return
        elif LEVELS.index(level) < LEVELS.index(self.level):
            return
        self.server.notify("notifications/message", {"level": level, "logger": logger, "data": data})

    def progress(self, progress, total=None, message=None):
        if self.progress_token is None:
            return
        p = {"progressToken": self.progress_token, "progress": progress}
        if total is not None:
            p["total"] = total
        if message is not None:
            p["message"] = message
        self.server.notify("notifications/progress", p)

    def sleep(self, seconds):
        """Sleeps; Cancelled if the client cancels this request meanwhile."""
        if self.server.cancel_event(self.rid).wait(seconds):
            raise Cancelled()


class Server:
    def __init__(self):
        self.out_lock = threading.Lock()
        self.lock = threading.Lock()
        self.modern = False
        self.version = None
        self.client_caps = {}
        self.level = None  # legacy logging/setLevel
        self.signer = StateSigner()
        self.dynamic_tool = False
        self.dynamic_prompt = False
        self.watched_version = 1
        self.subscriptions = set()  # legacy resources/subscribe
        self.listens = {}  # modern subscriptions/listen: request id key -> (id, agreed filter)
        self.waiting = {}  # our request id -> [Event, answer message]
        self.next_id = 0
        self.cancels = {}  # request id -> Event

    # ---- transport -------------------------------------------------------------------------

    def send(self, msg):
        data = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        with self.out_lock:
            try:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            except (BrokenPipeError, OSError):
                log("stdout closed; exiting")
                os._exit(0)

    def notify(self, method, params):
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def cancel_event(self, rid):
        with self.lock:
            return self.cancels.setdefault(json.dumps(rid), threading.Event())

    def request_client(self, call, method, params):
        """Legacy: sends one request to the client and waits for its answer."""
        with self.lock:
            self.next_id += 1
            rid = f"conformance-{self.next_id}"
            slot = [threading.Event(), None]
            self.waiting[rid] = slot
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        cancelled = self.cancel_event(call.rid)
        deadline = time.monotonic() + CLIENT_ANSWER_TIMEOUT
        try:
            while not slot[0].wait(0.05):
                if cancelled.is_set():
                    raise Cancelled()
                if time.monotonic() > deadline:
                    raise ToolError(f"the client did not answer {method} within {CLIENT_ANSWER_TIMEOUT:g} s")
        finally:
            with self.lock:
                self.waiting.pop(rid, None)
        answer = slot[1]
        if "error" in answer:
            err = answer["error"] if isinstance(answer["error"], dict) else {}
            raise ToolError(f"the client refused {method}: {err.get('message', 'error')} ({err.get('code')})")
        result = answer.get("result")
        try:
            check_answer("result", method, result)
        except RpcError:
            raise ToolError(f"the client answered {method} with something that is not its result") from None
        return result

    def serve(self):
        for line in sys.stdin.buffer:
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                log(f"unparsable line: {line[:80]!r}")
                self.send({"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": "Parse error"}})
                continue
            if not isinstance(msg, dict):
                self.send({"jsonrpc": "2.0", "id": None,
                           "error": {"code": INVALID_REQUEST, "message": "Invalid Request"}})
                continue
            self.dispatch(msg)
        log("stdin closed; exiting")

    def dispatch(self, msg):
        method = msg.get("method")
        if not isinstance(method, str):
            if "id" in msg and ("result" in msg or "error" in msg):
                with self.lock:
                    slot = self.waiting.get(msg["id"]) if isinstance(msg["id"], str) else None
                if slot is None:
                    log(f"answer to nothing asked: {msg.get('id')!r}")
                    return
                slot[1] = msg
                slot[0].set()
            elif "id" in msg:
                self.send({"jsonrpc": "2.0", "id": msg["id"],
                           "error": {"code": INVALID_REQUEST, "message": "Invalid Request"}})
            return
        if "id" not in msg:
            self.on_notification(method, msg.get("params") or {})
        elif method == "initialize":
            # Served in order: everything after it depends on the mode it picks.
            self.handle(msg)
        else:
            threading.Thread(target=self.handle, args=(msg,), daemon=True).start()

    def on_notification(self, method, params):
        if method == "notifications/cancelled" and isinstance(params, dict):
            rid = params.get("requestId")
            log(f"cancelled: {rid!r}")
            with self.lock:
                # A listen ends here, before any later request is read: nothing more reaches it.
                self.listens.pop(json.dumps(rid), None)
            self.cancel_event(rid).set()
        elif method == "notifications/initialized":
            log("initialized")

    def handle(self, msg):
        rid, method = msg["id"], msg["method"]
        params = msg.get("params")
        if params is None:
            params = {}
        try:
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "Invalid params: params must be an object")
            handler = self.METHODS.get(method)
            if handler is None or (self.modern and method in REMOVED_IN_MODERN):
                raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")
            call = Call(self, rid, method, params)
            try:
                result = handler(self, call)
            except InputRequired as need:
                result = {"resultType": "input_required", "inputRequests": need.requests,
                          "requestState": need.state}
            if self.modern and method != "initialize":
                result.setdefault("resultType", "complete")
        except Cancelled:
            log(f"request {rid!r} cancelled; no response")
            return
        except RpcError as e:
            self.send({"jsonrpc": "2.0", "id": rid, "error": e.to_json()})
            return
        except ToolError as e:
            # Outside tools/call (a prompt that asks the client) a failure is a JSON-RPC error.
            self.send({"jsonrpc": "2.0", "id": rid, "error": {"code": INTERNAL_ERROR, "message": str(e)}})
            return
        except Exception as e:  # a fixture bug must still answer, and say what broke
            log(f"internal error in {method}: {e!r}")
            self.send({"jsonrpc": "2.0", "id": rid, "error": {"code": INTERNAL_ERROR, "message": repr(e)}})
            return
        finally:
            with self.lock:
                self.cancels.pop(json.dumps(rid), None)
        self.send({"jsonrpc": "2.0", "id": rid, "result": result})

    def announce(self, kind, method, params, uri=None):
        """A list change (`kind`: the listen filter's flag) or a resource update (`uri`) to whoever
        asked for it: legacy, every list change and the updates of resources/subscribe'd URIs;
        modern, each subscriptions/listen that opted in, tagged with its subscriptionId."""
        if not self.modern:
            with self.lock:
                wanted = uri is None or uri in self.subscriptions
            if wanted:
                self.notify(method, params)
            return
        with self.lock:
            listens = list(self.listens.values())
        for sub_id, agreed in listens:
            if (agreed.get(kind) is True) if uri is None else uri in agreed.get("resourceSubscriptions", []):
                self.notify(method, {**params, "_meta": {META + "subscriptionId": sub_id}})

    # ---- lifecycle -------------------------------------------------------------------------

    def capabilities(self):
        return {"tools": {"listChanged": True}, "prompts": {"listChanged": True},
                "resources": {"listChanged": True, "subscribe": True}, "logging": {}, "completions": {}}

    def m_initialize(self, call):
        asked = call.params.get("protocolVersion")
        self.modern = asked == MODERN
        call.modern = self.modern
        self.version = asked if asked == MODERN or asked in LEGACY else LEGACY[0]
        caps = call.params.get("capabilities")
        self.client_caps = caps if isinstance(caps, dict) else {}
        log(f"initialize: client asked {asked!r}, answering {self.version} "
            f"({'modern' if self.modern else 'legacy'})")
        return {"protocolVersion": self.version, "capabilities": self.capabilities(),
                "serverInfo": {"name": "lodge-conformance", "version": "1"},
                "instructions": "Fixture for the MCP conformance suite's server scenarios."}

    def m_discover(self, call):
        return {"supportedVersions": [MODERN, *LEGACY], "capabilities": self.capabilities(),
                "serverInfo": {"name": "lodge-conformance", "version": "1"}}

    def m_ping(self, call):
        return {}

    def m_set_level(self, call):
        level = call.params.get("level")
        if level not in LEVELS:
            raise RpcError(INVALID_PARAMS, f"Invalid params: level must be one of {', '.join(LEVELS)}")
        self.level = level
        return {}

    def cached(self, method, result, ttl=None):
        if self.modern:
            result["ttlMs"] = CACHE_HINTS[method] if ttl is None else ttl
            result["cacheScope"] = "public"
        return result

    # ---- tools -----------------------------------------------------------------------------

    def tool_list(self):
        tools = [(n, d, s) for n, (d, s) in TOOLS.items()]
        if self.dynamic_tool:
            tools.append(DYNAMIC_TOOL)
        out = []
        for name, description, schema in tools:
            tool = {"name": name, "description": description, "inputSchema": schema}
            if name == "test_structured_content":
                tool["outputSchema"] = STRUCTURED_OUTPUT
            out.append(tool)
        return out

    def m_tools_list(self, call):
        return self.cached("tools/list", {"tools": self.tool_list()})

    def m_tools_call(self, call):
        name = call.params.get("name")
        args = call.params.get("arguments")
        if args is None:
            args = {}
        tool = next((t for t in self.tool_list() if t["name"] == name), None)
        if tool is None:
            raise RpcError(INVALID_PARAMS, f"Unknown tool: {name}")
        if not isinstance(args, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: arguments must be an object")
        for key in tool["inputSchema"].get("required", []):
            if key not in args:
                raise RpcError(INVALID_PARAMS, f"Invalid params: missing required argument '{key}'")
        try:
            return getattr(self, "t_" + name)(call, args)
        except ToolError as e:
            return text_result(str(e), is_error=True)

    def t_test_simple_text(self, call, args):
        return text_result("This is a simple text response for testing.")

    def t_test_image_content(self, call, args):
        return {"content": [{"type": "image", "data": PNG_B64, "mimeType": "image/png"}]}

    def t_test_audio_content(self, call, args):
        return {"content": [{"type": "audio", "data": WAV_B64, "mimeType": "audio/wav"}]}

    def t_test_embedded_resource(self, call, args):
        return {"content": [{"type": "resource", "resource": {
            "uri": "test://embedded-resource", "mimeType": "text/plain",
            "text": "This is an embedded resource content."}}]}

    def t_test_multiple_content_types(self, call, args):
        return {"content": [
            text("Multiple content types test:"),
            {"type": "image", "data": PNG_B64, "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "test://mixed-content-resource",
                                              "mimeType": "application/json",
                                              "text": json.dumps({"test": "data", "value": 123})}}]}

    def t_test_resource_link(self, call, args):
        return {"content": [{"type": "resource_link", "uri": "test://static-text", "name": "static-text",
                             "mimeType": "text/plain"}]}

    def t_test_structured_content(self, call, args):
        return {"content": [text('{"sum": 3}')], "structuredContent": {"sum": 3}}

    def t_test_echo(self, call, args):
        return text_result(str(args["text"]))

    def t_test_dynamic_tool(self, call, args):
        return text_result("dynamic tool called")

    def t_test_tool_with_logging(self, call, args):
        call.log("info", "Tool execution started")
        call.sleep(0.05)
        call.log("info", "Tool processing data")
        call.sleep(0.05)
        call.log("info", "Tool execution completed")
        return text_result("Tool with logging executed successfully")

    def t_test_logging_tool(self, call, args):
        call.log("info", "test_logging_tool ran")
        return text_result("logged (when a level was set)")

    def t_test_tool_with_progress(self, call, args):
        for step in (0, 50, 100):
            if step:
                call.sleep(0.05)
            call.progress(step, 100, f"{step}%")
        return text_result("Tool with progress executed successfully")

    def t_test_error_handling(self, call, args):
        return text_result("This tool intentionally returns an error for testing", is_error=True)

    def t_test_slow(self, call, args):
        seconds = args["seconds"]
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
            raise RpcError(INVALID_PARAMS, "Invalid params: seconds must be a number >= 0")
        steps = max(1, int(seconds * 4))
        for i in range(1, steps + 1):
            call.sleep(seconds / steps)
            call.progress(i, steps)
        return text_result(f"slept {seconds:g} s")

    def t_test_reconnection(self, call, args):
        call.sleep(0.3)
        return text_result("Reconnection test completed")

    def t_test_sampling(self, call, args):
        answer = call.ask1("llm", sampling(str(args["prompt"])))
        return text_result(f"LLM response: {sampled_text(answer)}")

    def t_test_elicitation(self, call, args):
        answer = call.ask1("user_input", elicit_form(str(args["message"]), {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"}}, ["username", "email"]))
        return text_result(f"User response: {describe_elicit(answer)}")

    def t_test_elicitation_url(self, call, args):
        elicitation = call.caps.get("elicitation")
        if not (isinstance(elicitation, dict) and isinstance(elicitation.get("url"), dict)):
            if call.modern:
                raise RpcError(MISSING_CAPABILITY, "Missing required client capability: elicitation.url",
                               {"requiredCapabilities": {"elicitation": {"url": {}}}})
            raise ToolError("the client does not support URL-mode elicitation")
        answer = call.ask1("visit", ("elicitation/create", {
            "mode": "url", "message": "Please confirm on the page", "url": "https://example.com/confirm",
            "elicitationId": "conformance-url-1"}))
        return text_result(f"URL elicitation: action={answer.get('action')}")

    def t_test_elicitation_sep1034_defaults(self, call, args):
        answer = call.ask1("defaults", elicit_form("Please review your details", {
            "name": {"type": "string", "description": "Full name", "default": "John Doe"},
            "age": {"type": "integer", "description": "Age", "default": 30},
            "score": {"type": "number", "description": "Score", "default": 95.5},
            "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
            "verified": {"type": "boolean", "description": "Verified", "default": True}}))
        return text_result(f"Elicitation completed: {describe_elicit(answer)}")

    def t_test_elicitation_sep1330_enums(self, call, args):
        answer = call.ask1("enums", elicit_form("Please choose", {
            "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
            "titledSingle": {"type": "string", "oneOf": [
                {"const": "value1", "title": "First Option"}, {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"}]},
            "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                           "enumNames": ["Option One", "Option Two", "Option Three"]},
            "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
            "titledMulti": {"type": "array", "items": {"anyOf": [
                {"const": "value1", "title": "First Choice"}, {"const": "value2", "title": "Second Choice"},
                {"const": "value3", "title": "Third Choice"}]}}}))
        return text_result(f"Elicitation completed: {describe_elicit(answer)}")

    def t_test_streaming_elicitation(self, call, args):
        call.progress(0, 2, "asking")
        answer = call.ask1("confirm", elicit_form("Continue?", {"ok": {"type": "boolean"}}, ["ok"]))
        call.progress(2, 2, "answered")
        return text_result(f"Streaming elicitation: {describe_elicit(answer)}")

    def t_test_list_roots(self, call, args):
        answer = call.ask1("roots", ROOTS)
        return text_result("Roots: " + json.dumps([r.get("uri") for r in answer["roots"] if isinstance(r, dict)]))

    def t_test_missing_capability(self, call, args):
        answer = call.ask1("llm", sampling("Say hello"))
        return text_result(f"LLM response: {sampled_text(answer)}")

    def t_test_trigger_tool_change(self, call, args):
        self.dynamic_tool = not self.dynamic_tool
        self.announce("toolsListChanged", "notifications/tools/list_changed", {})
        return text_result(f"test_dynamic_tool is now {'listed' if self.dynamic_tool else 'gone'}")

    def t_test_trigger_prompt_change(self, call, args):
        self.dynamic_prompt = not self.dynamic_prompt
        self.announce("promptsListChanged", "notifications/prompts/list_changed", {})
        return text_result(f"test_dynamic_prompt is now {'listed' if self.dynamic_prompt else 'gone'}")

    def t_test_trigger_resource_update(self, call, args):
        uri = "test://watched-resource"
        with self.lock:
            self.watched_version += 1
        self.announce(None, "notifications/resources/updated", {"uri": uri}, uri)
        return text_result(f"{uri} is now version {self.watched_version}")

    def t_test_custom_header_param(self, call, args):
        return text_result(f"region={args['region']}")

    def t_json_schema_2020_12_tool(self, call, args):
        return text_result("json_schema_2020_12_tool called with " + json.dumps(args, sort_keys=True))

    # -- input-required (modern) / live requests (legacy) --

    def t_test_input_required_result_elicitation(self, call, args):
        answer = call.ask1("user_name", elicit_form("What is your name?", {"name": _STR}, ["name"]))
        name = (answer.get("content") or {}).get("name", "stranger")
        return text_result(f"Hello, {name}!")

    def t_test_input_required_result_sampling(self, call, args):
        answer = call.ask1("capital_question", sampling("What is the capital of France?"))
        return text_result(f"The model said: {sampled_text(answer)}")

    def t_test_input_required_result_list_roots(self, call, args):
        answer = call.ask1("client_roots", ROOTS)
        return text_result(f"The client has {len(answer['roots'])} root(s)")

    def t_test_input_required_result_request_state(self, call, args):
        if call.modern and not call.state_ok:
            # An answer counts only with the state it was asked under: ask (again), with state.
            call.fresh = {}
        answer = call.ask1("confirm", elicit_form("Please confirm", {"ok": {"type": "boolean"}}, ["ok"]))
        return text_result(f"state-ok: confirmed {describe_elicit(answer)}")

    def t_test_input_required_result_multiple_inputs(self, call, args):
        answers = call.ask({
            "user_name": elicit_form("What is your name?", {"name": _STR}, ["name"]),
            "greeting": sampling("Generate a greeting", 50),
            "client_roots": ROOTS})
        name = (answers["user_name"].get("content") or {}).get("name", "stranger")
        return text_result(f"{sampled_text(answers['greeting'])} {name} "
                           f"({len(answers['client_roots']['roots'])} root(s))")

    def t_test_input_required_result_multi_round(self, call, args):
        a1 = call.ask1("step1", elicit_form("Step 1: What is your name?", {"name": _STR}, ["name"]))
        a2 = call.ask1("step2", elicit_form("Step 2: What is your favorite color?", {"color": _STR}, ["color"]))
        name = (a1.get("content") or {}).get("name")
        color = (a2.get("content") or {}).get("color")
        return text_result(f"{name} likes {color}")

    def t_test_input_required_result_tampered_state(self, call, args):
        answer = call.ask1("confirm", elicit_form("Please confirm", {"ok": {"type": "boolean"}}, ["ok"]))
        return text_result(f"confirmed: {describe_elicit(answer)}")

    def t_test_input_required_result_capabilities(self, call, args):
        wanted = {"llm": sampling("Summarise the request"),
                  "user": elicit_form("Anything to add?", {"note": _STR})}
        allowed = {k: r for k, r in wanted.items() if isinstance(call.caps.get(NEEDS_CAPABILITY[r[0]]), dict)}
        if not allowed:
            return text_result("the client declared neither sampling nor elicitation: nothing to ask")
        answers = call.ask(allowed)
        return text_result("answered: " + ", ".join(sorted(answers)))

    # ---- prompts ---------------------------------------------------------------------------

    def prompt_list(self):
        prompts = [(n, d, a) for n, (d, a) in PROMPTS.items()]
        if self.dynamic_prompt:
            prompts.append(DYNAMIC_PROMPT)
        return [{"name": n, "description": d, "arguments": a} for n, d, a in prompts]

    def m_prompts_list(self, call):
        return self.cached("prompts/list", {"prompts": self.prompt_list()})

    def m_prompts_get(self, call):
        name = call.params.get("name")
        prompt = next((p for p in self.prompt_list() if p["name"] == name), None)
        if prompt is None:
            raise RpcError(INVALID_PARAMS, f"Invalid params: unknown prompt {name!r}")
        args = call.params.get("arguments") or {}
        if not isinstance(args, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: arguments must be an object")
        for a in prompt["arguments"]:
            if a.get("required") and not isinstance(args.get(a["name"]), str):
                raise RpcError(INVALID_PARAMS, f"Invalid params: missing required argument '{a['name']}'")
        user = lambda content: {"role": "user", "content": content}  # noqa: E731
        if name == "test_simple_prompt":
            messages = [user(text("This is a simple prompt for testing."))]
        elif name == "test_prompt_with_arguments":
            messages = [user(text(f"Prompt with arguments: arg1='{args['arg1']}', arg2='{args['arg2']}'"))]
        elif name == "test_prompt_with_embedded_resource":
            messages = [user({"type": "resource", "resource": {
                "uri": args["resourceUri"], "mimeType": "text/plain",
                "text": "Embedded resource content for testing."}}),
                user(text("Please process the embedded resource above."))]
        elif name == "test_prompt_with_image":
            messages = [user({"type": "image", "data": PNG_B64, "mimeType": "image/png"}),
                        user(text("Please analyze the image above."))]
        elif name == "test_input_required_result_prompt":
            answer = call.ask1("user_context", elicit_form(
                "What context should the prompt use?", {"context": _STR}, ["context"]))
            context = (answer.get("content") or {}).get("context", "")
            messages = [user(text(f"Use this context: {context}"))]
        else:
            messages = [user(text("This prompt appeared after test_trigger_prompt_change."))]
        return {"description": prompt["description"], "messages": messages}

    # ---- resources -------------------------------------------------------------------------

    def m_resources_list(self, call):
        return self.cached("resources/list", {"resources": RESOURCES})

    def m_templates_list(self, call):
        return self.cached("resources/templates/list", {"resourceTemplates": [TEMPLATE]})

    def m_resources_read(self, call):
        uri = call.params.get("uri")
        if not isinstance(uri, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: missing 'uri'")
        ttl = 60000
        if uri == "test://static-text":
            content = {"mimeType": "text/plain", "text": STATIC_TEXT}
        elif uri == "test://static-binary":
            content = {"mimeType": "image/png", "blob": PNG_B64}
        elif uri == "test://watched-resource":
            content = {"mimeType": "text/plain", "text": f"watched resource, version {self.watched_version}"}
            ttl = 0
        elif uri == "test://example-resource":
            content = {"mimeType": "text/plain", "text": "Example resource content."}
        elif uri.startswith("test://template/") and uri.endswith("/data") and len(uri) > len("test://template//data"):
            rid = uri[len("test://template/"):-len("/data")]
            content = {"mimeType": "application/json",
                       "text": json.dumps({"id": rid, "templateTest": True, "data": f"Data for ID: {rid}"})}
        else:
            # 2026-07-28 standardised -32602 (SEP-2164); older revisions used -32002.
            code = INVALID_PARAMS if self.modern else LEGACY_RESOURCE_NOT_FOUND
            raise RpcError(code, "Resource not found", {"uri": uri})
        return self.cached("resources/read", {"contents": [{"uri": uri, **content}]}, ttl)

    def m_subscribe(self, call):
        uri = call.params.get("uri")
        if not isinstance(uri, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: missing 'uri'")
        with self.lock:
            self.subscriptions.add(uri)
        return {}

    def m_unsubscribe(self, call):
        uri = call.params.get("uri")
        if not isinstance(uri, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: missing 'uri'")
        with self.lock:
            self.subscriptions.discard(uri)
        return {}

    def m_listen(self, call):
        """2026-07-28 subscriptions: acknowledged first (with what is honoured), then the
        notifications asked for, until the client cancels the request."""
        if not self.modern:
            raise RpcError(METHOD_NOT_FOUND, "Method not found: subscriptions/listen")
        asked = call.params.get("notifications")
        if not isinstance(asked, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: notifications must be an object")
        agreed = {k: True for k in ("toolsListChanged", "promptsListChanged", "resourcesListChanged")
                  if asked.get(k) is True}
        uris = asked.get("resourceSubscriptions")
        if uris is not None:
            if not (isinstance(uris, list) and all(isinstance(u, str) for u in uris)):
                raise RpcError(INVALID_PARAMS, "Invalid params: resourceSubscriptions must be a list of URIs")
            agreed["resourceSubscriptions"] = uris
        key = json.dumps(call.rid)
        # Registered before the acknowledgement: a client may act on the ack at once, and what
        # it triggers must then reach this listen.
        with self.lock:
            self.listens[key] = (call.rid, agreed)
        self.notify("notifications/subscriptions/acknowledged",
                    {"_meta": {META + "subscriptionId": call.rid}, "notifications": agreed})
        try:
            self.cancel_event(call.rid).wait()
            raise Cancelled()
        finally:
            with self.lock:
                self.listens.pop(key, None)

    # ---- completion ------------------------------------------------------------------------

    def m_complete(self, call):
        ref = call.params.get("ref")
        argument = call.params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: ref and argument are required")
        key = (ref.get("type"), ref.get("name") if ref.get("type") == "ref/prompt" else ref.get("uri"),
               argument.get("name"))
        prefix = str(argument.get("value", ""))
        values = [v for v in COMPLETIONS.get(key, []) if v.startswith(prefix)]
        return {"completion": {"values": values, "total": len(values), "hasMore": False}}

    METHODS = {
        "initialize": m_initialize,
        "server/discover": m_discover,
        "ping": m_ping,
        "logging/setLevel": m_set_level,
        "tools/list": m_tools_list,
        "tools/call": m_tools_call,
        "prompts/list": m_prompts_list,
        "prompts/get": m_prompts_get,
        "resources/list": m_resources_list,
        "resources/templates/list": m_templates_list,
        "resources/read": m_resources_read,
        "resources/subscribe": m_subscribe,
        "resources/unsubscribe": m_unsubscribe,
        "completion/complete": m_complete,
        "subscriptions/listen": m_listen,
    }


# Methods 2026-07-28 removed: answered "method not found" in modern mode.
REMOVED_IN_MODERN = {"ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"}


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    log(f"serving (uid {os.getuid()}, cwd {os.getcwd()})")
    try:
        Server().serve()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
