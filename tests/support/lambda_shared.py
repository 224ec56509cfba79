"""Pieces shared by the local Lambda fakes: `lambda_runtime` (the Runtime API alone) and
`lambda_control` (the control plane: Runtime API plus Extensions API, with extension processes).

Both serve JSON over HTTP/1.1 on 127.0.0.1 from a daemon thread, hand invocations to the real
awslambdaric runtime client with the same headers, and run their children with stdout and stderr
going to a log file (never a pipe: a full pipe would block the child).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RUNTIME_PREFIX = "/2018-06-01/runtime"
FUNCTION_NAME = "amp-test"
FUNCTION_VERSION = "$LATEST"
MEMORY_SIZE_MB = "256"
REGION = "us-east-1"
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:123456789012:function:{FUNCTION_NAME}"
TRACE_ID = "Root=1-5e1b4151-5ac6c58f5b5daa6532e4a3c1;Sampled=0"
REPO_ROOT = Path(__file__).resolve().parents[2]


def epoch_ms() -> int:
    """Wall clock in epoch milliseconds: the unit of every Lambda deadline."""
    return int(time.time() * 1000)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A child killed mid-request (a timeout, a crash test, teardown) resets its connection;
        # that is expected here and not worth a traceback on stderr.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port), served from a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        # A short poll interval: stop() waits for the serving loop to notice, at every teardown.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def address(self) -> str:
        """host:port, the value of AWS_LAMBDA_RUNTIME_API."""
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (the runtime client keeps its connection alive), JSON bodies, no request log."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.on_get()

    def do_POST(self) -> None:
        self.on_post()

    def on_get(self) -> None:  # subclasses override these two
        self.reply(404, {"error": "not found"})

    def on_post(self) -> None:
        self.reply(404, {"error": "not found"})

    def read_body(self) -> Any:
        """The request body: parsed JSON, else text, else None when empty."""
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def reply(self, status: int, payload: Any,
              headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_body(status, json.dumps(payload).encode(), headers)

    def send_body(self, status: int, body: bytes,
                  headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_invocation(self, request_id: str, deadline_ms: int, event: Any) -> None:
        """The reply to GET /runtime/invocation/next, with the Lambda-Runtime-* headers."""
        self.send_body(200, json.dumps(event).encode(), (
            ("Lambda-Runtime-Aws-Request-Id", request_id),
            ("Lambda-Runtime-Deadline-Ms", str(deadline_ms)),
            ("Lambda-Runtime-Invoked-Function-Arn", FUNCTION_ARN),
            ("Lambda-Runtime-Trace-Id", TRACE_ID),
        ))


def runtime_paths(python_path: Sequence[Path | str], *, isolated_path: bool) -> list[str]:
    """PYTHONPATH for the runtime: `python_path`, then the repository root unless isolated."""
    return [str(p) for p in python_path] + ([] if isolated_path else [str(REPO_ROOT)])


def runtime_environment(address: str, env: Mapping[str, str], python_path: Sequence[Path | str],
                        *, isolated_path: bool,
                        extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The runtime process's environment: the platform's variables, then `extra`, then `env`
    (the function's own variables win, so a test can override any of them)."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "AWS_LAMBDA_RUNTIME_API": address,
        "AWS_LAMBDA_FUNCTION_NAME": FUNCTION_NAME,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": MEMORY_SIZE_MB,
        "AWS_LAMBDA_FUNCTION_VERSION": FUNCTION_VERSION,
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{FUNCTION_NAME}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "test",
        "PYTHONPATH": os.pathsep.join(runtime_paths(python_path, isolated_path=isolated_path)),
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
        **env,
    }


def runtime_command(handler: str, *, isolated_path: bool) -> list[str]:
    """`python -m awslambdaric <handler>`; with `isolated_path`, -S (no site-packages)."""
    return [sys.executable, *(["-S"] if isolated_path else []), "-m", "awslambdaric", handler]


def spawn_logged(command: Sequence[str], *, env: Mapping[str, str], log_path: Path,
                 cwd: Path | None = None, new_session: bool = False) -> subprocess.Popen[bytes]:
    """Start `command` with stdout and stderr appended to `log_path`."""
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(list(command), env=dict(env), cwd=cwd, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=new_session)


class LoggedProcess:
    """A child process whose output goes to `log_path`."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        """Everything the process printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout_s: float = 20.0) -> int:
        return self.process.wait(timeout_s)
