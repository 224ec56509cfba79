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

import queue
import subprocess
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.lambda_shared import (
    FUNCTION_ARN,
    REPO_ROOT,
    RUNTIME_PREFIX,
    JsonHandler,
    LocalServer,
    LoggedProcess,
    epoch_ms,
    runtime_command,
    runtime_environment,
    spawn_logged,
)

__all__ = ["FUNCTION_ARN", "PREFIX", "REPO_ROOT", "FakeRuntimeAPI", "InvocationResult",
           "RuntimeProcess", "lambda_runtime"]

PREFIX = RUNTIME_PREFIX


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
        self._server = LocalServer(_make_handler(self))

    @property
    def address(self) -> str:
        return self._server.address

    def start(self) -> FakeRuntimeAPI:
        self._server.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.stop()

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
            now = epoch_ms()
            deadline = now + timeout_ms
            self._handed_out[request_id] = (now, deadline)
            return request_id, event, now, deadline
        return None

    def _post(self, request_id: str, kind: str, body: Any) -> None:
        handed_out, deadline = self._handed_out.get(request_id, (0, 0))
        result = InvocationResult(kind, body, handed_out, deadline, epoch_ms())
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


def _make_handler(api: FakeRuntimeAPI) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def on_get(self) -> None:
            if self.path == f"{PREFIX}/restore/next":
                restored = api._await_restore()
                self.reply(200 if restored else 503, {} if restored else {"error": "stopped"})
                return
            if self.path != f"{PREFIX}/invocation/next":
                self.reply(404, {"error": "not found"})
                return
            handed = api._next()
            if handed is None:
                self.reply(503, {"error": "shutting down"})
                return
            request_id, event, _, deadline = handed
            self.send_invocation(request_id, deadline, event)

        def on_post(self) -> None:
            body = self.read_body()
            parts = self.path[len(PREFIX):].strip("/").split("/")
            if parts == ["init", "error"]:
                api._post_init_error(body)
            elif parts == ["restore", "error"]:
                api._post_restore_error(body)
            elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response",
                                                                              "error"):
                api._post(parts[1], parts[2], body)
            else:
                self.reply(404, {"error": "not found"})
                return
            self.reply(202, {"status": "OK"})

    return Handler


@dataclass
class RuntimeProcess(LoggedProcess):
    """The runtime subprocess; `output()` is what the runtime and the function printed."""

    api: FakeRuntimeAPI
    process: subprocess.Popen[bytes]
    log_path: Path


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
    snapstart_env = {"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"} if snapstart else {}
    child_env = runtime_environment(api.address, env, python_path, isolated_path=isolated_path,
                                    extra=snapstart_env)
    log_path = log_dir / f"runtime-{uuid.uuid4().hex[:8]}.log"
    process = spawn_logged(runtime_command(handler, isolated_path=isolated_path), env=child_env,
                           log_path=log_path)
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
