#!/usr/bin/env python3
"""lodge-git-http: smart-HTTP git server for Lodge's integration tests (issue 7). Stdlib only.

  git_http_server.py --root DIR --users alice=TOKEN_A,bob=TOKEN_B [--port 0] [--bind 127.0.0.1]
                     [--init OWNER/NAME ...] [--users-env VAR]

Serves bare repositories DIR/OWNER/NAME.git through `git http-backend` (a CGI, push enabled) behind
HTTP Basic auth, so tests can drive real git with each user's own token. The password must equal one
user's token (the username part is ignored). --users-env VAR reads the --users list from env VAR,
keeping tokens off this process's command line. --init creates DIR/OWNER/NAME.git (bare, branch
main, one commit with README.md "hello from OWNER/NAME\\n"); an existing repository is an error.

Access: DIR/OWNER/* only for user OWNER, DIR/shared/* for every user. Missing or bad credentials:
401 + `WWW-Authenticate: Basic realm="lodge-test"` (git: "Authentication failed"). A valid user on
another owner's repository: 403, not 404, so tests can tell "refused" from "no such repository"
(a missing repository of one's own gets http-backend's 404).

Prints one line "listening on http://HOST:PORT" on stdout when ready, then one stderr line per
request, "METHOD PATH -> STATUS user=NAME" (user=- if unauthenticated), followed by any
"http-backend: ..." diagnostics. Tokens are never logged or written. SIGTERM/SIGINT: exit 0.
"""

import argparse
import base64
import hmac
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHARED = "shared"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PATH_RE = re.compile(r"^/([A-Za-z0-9][A-Za-z0-9._-]*)/[A-Za-z0-9][A-Za-z0-9._-]*\.git(/.*)?$")
BUF = 64 * 1024
_log_lock = threading.Lock()


def log(text):
    with _log_lock:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def git_env():
    """Environment for every git child: nothing from the host's git config or git variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "HTTP_"))}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0")
    return env


def init_repo(root, spec):
    owner, _, name = spec.partition("/")
    if not (NAME_RE.match(owner) and NAME_RE.match(name)) or name.endswith(".git"):
        sys.exit(f"--init {spec!r}: expected OWNER/NAME")
    bare = os.path.join(root, owner, name + ".git")
    if os.path.exists(bare):
        sys.exit(f"--init {spec!r}: {bare} already exists")

    def run(*argv, cwd=None):
        subprocess.run(argv, cwd=cwd, env=git_env(), check=True, stdout=subprocess.DEVNULL)

    os.makedirs(os.path.dirname(bare), exist_ok=True)
    run("git", "init", "-q", "--bare", "-b", "main", bare)
    tmp = tempfile.mkdtemp(prefix="lodge-git-init-")
    try:
        ident = ("-c", "user.name=test", "-c", "user.email=test@example.invalid")
        run("git", "init", "-q", "-b", "main", tmp)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(f"hello from {owner}/{name}\n")
        run("git", *ident, "add", "README.md", cwd=tmp)
        run("git", *ident, "commit", "-q", "-m", "initial commit", cwd=tmp)
        run("git", "push", "-q", bare, "main:main", cwd=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_users(text):
    users = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, token = item.partition("=")
        if not sep or not token or not NAME_RE.match(name) or name == SHARED:
            sys.exit("--users: expected NAME=TOKEN[,NAME=TOKEN...] (NAME not 'shared')")
        if token in users.values():
            sys.exit("--users: two users share one token")
        users[name] = token
    if not users:
        sys.exit("--users: no users given")
    return users


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # so "Expect: 100-continue" is answered; every reply closes
    server_version = "lodge-git-http"
    timeout = 120
    root = users = None  # set by main()

    def log_message(self, *args):  # no default access log: we write our own line
        pass

    def do_GET(self):
        self.serve()

    def do_POST(self):
        self.serve()

    def is_chunked(self):
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def body_chunks(self):
        """Yield the request body, de-chunked if it came with Transfer-Encoding: chunked."""
        if self.is_chunked():
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                while size > 0:
                    data = self.rfile.read(min(size, BUF))
                    if not data:
                        return
                    size -= len(data)
                    yield data
                self.rfile.readline(16)  # the CRLF ending each chunk
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            data = self.rfile.read(min(left, BUF))
            if not data:
                return
            left -= len(data)
            yield data

    def authenticate(self):
        kind, _, cred = self.headers.get("Authorization", "").partition(" ")
        if kind.lower() != "basic":
            return None
        try:
            password = base64.b64decode(cred.strip(), validate=True).decode().partition(":")[2]
        except ValueError:
            return None
        for name, token in self.users.items():
            if hmac.compare_digest(password.encode(), token.encode()):
                return name
        return None

    def reply(self, code, user, body, headers=()):
        for _ in self.body_chunks():  # drain the upload, so closing does not reset the client
            pass
        self.send_response(code)
        for k, v in [*headers, ("Content-Type", "text/plain"), ("Connection", "close")]:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True
        log(f"{self.command} {self.path} -> {code} user={user or '-'}")

    def serve(self):
        user = self.authenticate()
        if user is None:
            return self.reply(401, None, b"authentication required\n",
                              [("WWW-Authenticate", 'Basic realm="lodge-test"')])
        raw_path, _, query = self.path.partition("?")
        path = urllib.parse.unquote(raw_path)
        m = PATH_RE.match(path)
        if not m or "/../" in path + "/" or "/./" in path + "/":
            return self.reply(404, user, b"not found\n")
        if m.group(1) not in (user, SHARED):
            return self.reply(403, user, b"forbidden\n")
        self.run_backend(user, path, query)

    def run_backend(self, user, path, query):
        env = git_env()
        env.update(GIT_PROJECT_ROOT=self.root, GIT_HTTP_EXPORT_ALL="1", REMOTE_USER=user,
                   REMOTE_ADDR=self.client_address[0], REQUEST_METHOD=self.command,
                   QUERY_STRING=query, PATH_INFO=path, GATEWAY_INTERFACE="CGI/1.1",
                   SERVER_PROTOCOL="HTTP/1.1", GIT_CONFIG_COUNT="1",
                   GIT_CONFIG_KEY_0="http.receivepack", GIT_CONFIG_VALUE_0="true")
        for header, var in (("Content-Type", "CONTENT_TYPE"), ("Content-Length", "CONTENT_LENGTH"),
                            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),  # gzip: backend inflates
                            ("Git-Protocol", "HTTP_GIT_PROTOCOL")):  # protocol v2
            if self.headers.get(header):
                env[var] = self.headers[header]
        if self.is_chunked():
            env.pop("CONTENT_LENGTH", None)  # without it http-backend reads stdin to EOF
        proc = subprocess.Popen(["git", "http-backend"], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        errors = []

        def feed():  # a thread: a large upload and a large response must not deadlock
            broken = False
            for data in self.body_chunks():
                if not broken:
                    try:
                        proc.stdin.write(data)
                    except BrokenPipeError:
                        broken = True  # keep draining the client's upload anyway
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass

        threads = [threading.Thread(target=feed, daemon=True),
                   threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)]
        for t in threads:
            t.start()
        code, reason, headers = 200, None, []
        while line := proc.stdout.readline().rstrip(b"\r\n").decode("latin-1"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "status":
                status = value.strip().split(" ", 1)
                code, reason = int(status[0]), (status[1:] or [None])[0]
            else:
                headers.append((key.strip(), value.strip()))
        self.send_response(code, reason)
        for k, v in [*headers, ("Connection", "close")]:  # the body ends when the connection does
            self.send_header(k, v)
        self.end_headers()
        self.close_connection = True
        try:
            while data := proc.stdout.read1(BUF):
                self.wfile.write(data)
            self.wfile.flush()
        finally:
            for t in threads:
                t.join()
            proc.stdout.close()
            proc.wait()
            log(f"{self.command} {self.path} -> {code} user={user}")
            for msg in b"".join(errors).decode("utf-8", "replace").splitlines():
                log(f"http-backend: {msg}")


def main():
    ap = argparse.ArgumentParser(description="smart-HTTP git server for Lodge's tests")
    ap.add_argument("--root", required=True)
    ap.add_argument("--users", help="NAME=TOKEN[,NAME=TOKEN...]")
    ap.add_argument("--users-env", metavar="VAR", help="read the --users list from env VAR")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--init", action="append", default=[], metavar="OWNER/NAME")
    args = ap.parse_args()
    if bool(args.users) == bool(args.users_env):
        ap.error("give exactly one of --users and --users-env")
    users = parse_users(args.users or os.environ.get(args.users_env, ""))
    root = os.path.abspath(args.root)
    os.makedirs(root, exist_ok=True)
    for spec in args.init:
        init_repo(root, spec)
    Handler.root, Handler.users = root, users
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too, even if inherited as ignored
        signal.signal(sig, lambda *_: sys.exit(0))
    print(f"listening on http://{args.bind}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except SystemExit:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
