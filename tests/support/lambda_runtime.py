"""A local fake of the AWS Lambda Runtime API, and the real awslambdaric runtime client against it.

The fake hands out invocations with a `Lambda-Runtime-Deadline-Ms` header and records what the
runtime posts back, so handlers run with a genuine LambdaContext, real deadlines and real error
reporting, in a subprocess (https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html).

With `snapstart=True` the runtime is told it initialises for SnapStart
(`AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`). awslambdaric 4.2.2 then, once the handler module
is imported, runs the before-snapshot hooks registered with `snapshot_restore_py` and calls
`GET /runtime/restore/next`, where Lambda snapshots the environment; the fake holds that call
(the snapshot point: `wait_for_snapshot()`) until `restore()`, after which the runtime runs the
after-restore hooks and asks for invocations. A failing hook is posted to `/runtime/init/error`
(before snapshot) or `/runtime/restore/error` (after restore).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PREFIX = "/2018-06-01/runtime"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:amp-test"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class InvocationResult:
    kind: str  # "response" or "error"
    body: Any
    handed_out_ms: int  # wall clock when the runtime received the invocation
    deadline_ms: int
    posted_ms: int  # wall clock when the runtime posted the result

    @property
    def took_ms(self) -> int:
        return self.posted_ms - self.handed_out_ms


class FakeRuntimeAPI:
    """The Runtime API on 127.0.0.1: `invoke(event)` blocks until the runtime posts a result."""

    def __init__(self, *, timeout_ms: int = 3000) -> None:
        self.timeout_ms = timeout_ms
        self._pending: queue.Queue[tuple[str, Any, int]] = queue.Queue()
        self._results: dict[str, InvocationResult] = {}
        self._handed_out: dict[str, tuple[int, int]] = {}
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self.init_error: Any = None
        self.restore_error: Any = None
        self.snapshot_requested = False  # the runtime called restore/next (hooks had run)
        self._restored = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeRuntimeAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def invoke(self, event: Any, *, timeout_ms: int | None = None,
               wait_s: float = 20.0) -> InvocationResult:
        request_id = str(uuid.uuid4())
        self._pending.put((request_id, event, timeout_ms or self.timeout_ms))
        with self._changed:
            arrived = self._changed.wait_for(
                lambda: request_id in self._results or self.init_error is not None, wait_s)
        if not arrived:
            raise TimeoutError(f"the runtime posted no result within {wait_s} s")
        if request_id not in self._results:
            raise RuntimeError(f"the runtime failed to initialise: {self.init_error}")
        return self._results[request_id]

    def wait_for_init_error(self, wait_s: float = 20.0) -> Any:
        with self._changed:
            self._changed.wait_for(lambda: self.init_error is not None, wait_s)
        return self.init_error

    def wait_for_snapshot(self, wait_s: float = 20.0) -> bool:
        """Wait until the runtime reaches the snapshot point (SnapStart: it called
        restore/next after its before-snapshot hooks). False if it failed or took too long."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.snapshot_requested or self.init_error is not None, wait_s)
        return self.snapshot_requested

    def restore(self) -> None:
        """Resume the runtime from the snapshot point: restore/next answers."""
        self._restored.set()

    def _await_restore(self) -> bool:  # called from a handler thread
        with self._changed:
            self.snapshot_requested = True
            self._changed.notify_all()
        while not self._restored.wait(0.1):
            if self._stopping.is_set():
                return False
        return True

    # called from handler threads
    def _next(self) -> tuple[str, Any, int, int] | None:
        while not self._stopping.is_set():
            try:
                request_id, event, timeout_ms = self._pending.get(timeout=0.1)
            except queue.Empty:
                continue
            now = int(time.time() * 1000)
            deadline = now + timeout_ms
            self._handed_out[request_id] = (now, deadline)
            return request_id, event, now, deadline
        return None

    def _post(self, request_id: str, kind: str, body: Any) -> None:
        handed_out, deadline = self._handed_out.get(request_id, (0, 0))
        result = InvocationResult(kind, body, handed_out, deadline, int(time.time() * 1000))
        with self._changed:
            self._results[request_id] = result
            self._changed.notify_all()

    def _post_init_error(self, body: Any) -> None:
        with self._changed:
            self.init_error = body
            self._changed.notify_all()

    def _post_restore_error(self, body: Any) -> None:
        with self._changed:
            self.restore_error = body
            self._changed.notify_all()


def _make_handler(api: FakeRuntimeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == f"{PREFIX}/restore/next":
                restored = api._await_restore()
                self._reply(200 if restored else 503, {} if restored else {"error": "stopped"})
                return
            if self.path != f"{PREFIX}/invocation/next":
                self._reply(404, {"error": "not found"})
                return
            handed = api._next()
            if handed is None:
                self._reply(503, {"error": "shutting down"})
                return
            request_id, event, _, deadline = handed
            body = json.dumps(event).encode()
            self.send_response(200)
            for name, value in (
                ("Content-Type", "application/json"),
                ("Lambda-Runtime-Aws-Request-Id", request_id),
                ("Lambda-Runtime-Deadline-Ms", str(deadline)),
                ("Lambda-Runtime-Invoked-Function-Arn", FUNCTION_ARN),
                ("Lambda-Runtime-Trace-Id", "Root=1-5e1b4151-5ac6c58f5b5daa6532e4a3c1;Sampled=0"),
                ("Content-Length", str(len(body))),
            ):
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            parts = self.path[len(PREFIX):].strip("/").split("/")
            if parts == ["init", "error"]:
                api._post_init_error(body)
            elif parts == ["restore", "error"]:
                api._post_restore_error(body)
            elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response",
                                                                              "error"):
                api._post(parts[1], parts[2], body)
            else:
                self._reply(404, {"error": "not found"})
                return
            self._reply(202, {"status": "OK"})

        def _reply(self, status: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@dataclass
class RuntimeProcess:
    api: FakeRuntimeAPI
    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        """Everything the runtime and the function printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout_s: float = 20.0) -> int:
        return self.process.wait(timeout_s)


@contextmanager
def lambda_runtime(handler: str, *, env: Mapping[str, str], python_path: Sequence[Path | str],
                   log_dir: Path, timeout_ms: int = 3000, isolated_path: bool = False,
                   snapstart: bool = False) -> Iterator[RuntimeProcess]:
    """Run `python -m awslambdaric <handler>` against a fresh FakeRuntimeAPI.

    `python_path` is prepended to PYTHONPATH, then the repository root. With `isolated_path`
    the interpreter runs with -S (no site-packages) and only `python_path` (plus the standard
    library): how a layer is checked as shipped, with the runtime client in `python_path`.
    With `snapstart` the runtime initialises for SnapStart (module docstring).
    """
    api = FakeRuntimeAPI(timeout_ms=timeout_ms).start()
    paths = [str(p) for p in python_path] + ([] if isolated_path else [str(REPO_ROOT)])
    child_env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "AWS_LAMBDA_FUNCTION_NAME": "amp-test",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/amp-test",
        "AWS_LAMBDA_LOG_STREAM_NAME": "test",
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONUNBUFFERED": "1",
        **({"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"} if snapstart else {}),
        **env,
    }
    log_path = log_dir / f"runtime-{uuid.uuid4().hex[:8]}.log"
    with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would block the child
        flags = ["-S"] if isolated_path else []
        process = subprocess.Popen([sys.executable, *flags, "-m", "awslambdaric", handler],
                                   env=child_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield RuntimeProcess(api, process, log_path)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        api.stop()
