"""A local fake of the Lambda control plane: the Runtime API and the Extensions API on one
address, external extension processes, the real awslambdaric runtime client, and the lifecycle
that binds them (init, invoke, shutdown, reset).

Modelled on https://docs.aws.amazon.com/lambda/latest/dg/runtimes-extensions-api.html and on the
Runtime Interface Emulator (aws/aws-lambda-runtime-interface-emulator, internal/lambda: rapid/
handlers.go and shutdown.go, rapi/handler/agent*.go, rapidcore/env/environment.go); see also
/work/shared/reference/serverless-and-test-tooling.md, section 12.

The protocol modelled
---------------------
* One HTTP server on 127.0.0.1 (its address is AWS_LAMBDA_RUNTIME_API) serves the Runtime API,
  `/2018-06-01/runtime/{invocation/next, invocation/<id>/response, invocation/<id>/error,
  init/error}`, and the Extensions API, `/2020-01-01/extension/{register, event/next,
  init/error, exit/error}`. Refusals are JSON `{"errorType", "errorMessage"}` with the
  emulator's error types.
* Init (on the first invoke(), or init()): every non-directory file of `extensions_dir`, in name
  order, at most 10, is executed directly as its own process (own process group), with the
  function's environment (`env` plus AWS_LAMBDA_RUNTIME_API, AWS_LAMBDA_FUNCTION_NAME/VERSION/
  MEMORY_SIZE, AWS_REGION, AWS_DEFAULT_REGION and the test's PATH), without the runtime's
  variables (its PYTHONPATH, _HANDLER, AWS_LAMBDA_LOG_*, anything starting with "_"), in an
  empty working directory of its own; its stdout and stderr go to a file (`output()`), so an
  extension that wants its lines seen promptly flushes them, as on Lambda. Each must `POST
  /extension/register` with `Lambda-Extension-Name` = its file name and `{"events": [...]}` (a
  subset of INVOKE, SHUTDOWN); the reply carries `Lambda-Extension-Identifier` and
  `{"functionName", "functionVersion", "handler"}`. Only when every extension has registered is
  the runtime (`python -m awslambdaric <handler>`) started; registration then closes (403
  Extension.RegistrationClosed). Init is complete when the runtime and every extension have
  called next once. Limit: `init_timeout_ms` (10 s).
* Invoke: the INVOKE event (`eventType`, `deadlineMs`, `requestId`, `invokedFunctionArn`,
  `tracing`) is written to the pending `/extension/event/next` of every INVOKE-subscribed
  extension *before* the runtime's `/runtime/invocation/next` gets the invocation (same request
  id, same deadline). The caller's answer is the runtime's post; the invocation ends when the
  runtime and every INVOKE-subscribed extension have called next again. The next invocation is
  handed out only after that. The deadline bounds the whole invocation, post-response
  extension work included.
* Failure and reset: an invocation not ended by its deadline times out (Sandbox.Timedout: the
  caller gets that error, unless the runtime had already posted its answer, which the caller
  then has; `failure` says the invocation timed out either way); any
  extension that exits outside shutdown, whatever its exit code, is Extension.Crash
  (Extension.ExitError if it had posted /extension/exit/error first); the runtime exiting is
  Runtime.ExitError; /extension/init/error fails the init (Extension.InitError); the runtime's
  /runtime/init/error fails it with the runtime's own errorType. Each failure resets the
  environment: shutdown with reason "timeout" or "failure", and the next invoke() initialises
  everything again (new processes, new registrations, new runtime).
* Shutdown (shutdown(), and the context's exit): deadlineMs = its start + `shutdown_budget_ms`,
  the runtime's share included (docs and emulator alike). The runtime gets SIGTERM and up to
  min(300 ms (docs), 30 % of the budget (emulator)) to exit, then SIGKILL. Then
  every SHUTDOWN-subscribed extension gets `{"eventType": "SHUTDOWN", "shutdownReason",
  "deadlineMs"}` at its next /event/next; extensions not subscribed are SIGKILLed at once;
  whatever still runs at the deadline is SIGKILLed (its whole process group).

Usage
-----
    with lambda_environment("app.handler", env={"K": "v"}, python_path=[code_dir],
                            log_dir=tmp_path, extensions_dir=layer / "extensions") as lam:
        result = lam.invoke({"user": 1})            # a cold start: init, then the invocation
        assert result.kind == "response" and result.failure is None
        print(result.caller_ms, result.post_response_ms)
        ext = lam.extension("amp-lite")             # the live process of that name
        print(ext.registered_s - ext.started_s, ext.received, ext.output())
        record = lam.shutdown()                      # SHUTDOWN, then SIGKILL at the deadline
        assert record.killed == []

The public API
--------------
`lambda_environment(handler, *, env, python_path, log_dir, extensions_dir=None,
timeout_ms=3000, isolated_path=False, shutdown_budget_ms=2000, init_timeout_ms=10000)` yields a
`LambdaEnvironment` (`handler`, `env`, `python_path`, `isolated_path` as for
lambda_runtime.lambda_runtime); every process and the server are stopped at exit, even when the
test failed. `LambdaEnvironment`:

* `invoke(event, *, timeout_ms=None, wait_s=20.0) -> InvokeResult`: initialises first if
  needed; returns once the invocation ended or failed (after any reset it caused).
* `init() -> Init`: initialise now (like provisioned concurrency) unless already initialised.
* `shutdown(reason="spindown") -> Shutdown | None` (None when nothing runs).
* `kill_extension(name) -> Extension`: SIGKILL its process group; returns once the crash was
  handled (an invocation in flight fails; idle, the environment is reset at once).
* `extension(name)` (the latest process of that name), `extensions(name=None)` (every
  generation), `runtime`, `runtimes`, `registrations(name)`, `next_calls(name)`,
  `events_sent(name)` (summed over generations).
* `inits`, `invocations`, `shutdowns`, `crashes`, `rejections` (every refused API call).
* `wait_for(predicate, wait_s=10.0) -> bool`: wait, without sleeping blindly, for a condition
  on these records (checked on every change, and at least every 50 ms).
* `address`: the AWS_LAMBDA_RUNTIME_API value.

`InvokeResult` (one per invoke()): `request_id`; `deadline_ms` (epoch ms, as the runtime's
Lambda-Runtime-Deadline-Ms and the INVOKE's deadlineMs) and `deadline_s`; `kind` ("response" or
"error") and `body`: what the caller got; `runtime_posted` (False: the body is the platform's
error); `failure`: the platform error that failed the invocation and reset the environment
(None when it ended normally; a handler's own exception is kind "error" with failure None);
`error_type` (the body's errorType); `init` (the Init this invoke ran first: a cold start) and
`generation`; times `invoked_s` (invoke() called), `dispatched_s` (INVOKE queued),
`delivered_s[name]` (INVOKE written to that extension), `handed_out_s` (the runtime got the
invocation; None if it never did), `posted_s` (the caller's answer: the runtime's post, else
the failure), `runtime_done_s` and `extension_done_s[name]` (each back at next), `ended_s`
(the invocation ended: all back at next; or the failure); `caller_ms` = posted - invoked,
`post_response_ms` = ended - posted, `duration_ms` = ended - dispatched (what Lambda bills).

`Extension` (one per process started): `name`, `generation`, `process`, `started_s` (just
before the start), `registered_s` (its register call arrived), `identifier`, `events`,
`registrations`, `next_calls`, `next_s`, `received` (events written to it), `init_error`,
`exit_error`, `exit_code` (negative: that signal), `exited_s`, `killed` (by the fake),
`output()`. `Runtime`: `started_s`, `next_s`, `first_next_s`, `exit_code`, `exited_s`,
`terminated` (SIGTERM), `killed`, `output()`. `Init`: `started_s`, `extensions`,
`registered_s` (all registered: the runtime starts), `runtime`, `done_s`, `ok`, `failure`,
`error`. `Shutdown`: `reason`, `deadline_ms`, `deadline_s`, `sent`, `killed`,
`killed_at_deadline`, `exit_codes`, `exited_s`, `runtime_exit_code`, `runtime_killed`.
`Crash`: `name`, `exit_code`, `exited_s`, `failure`, `phase` ("init", "invoke", "idle"),
`request_id`.

Times are `time.monotonic()` seconds (one clock for every process on Linux, so an extension's
own monotonic stamps compare with them); deadlines are epoch milliseconds, as on the wire.

Where the fake is simpler than Lambda
-------------------------------------
* No internal extensions: a register whose name is not a file of `extensions_dir` is refused
  (403 Extension.InvalidExtensionName), where the emulator would take it for an internal one.
* An unknown event or a malformed register body is a 400 (the Lambda docs list 400 for
  register; the emulator answers 403 Extension.InvalidEventType / InvalidRequestFormat).
* An init that times out while extensions register kills every process without SHUTDOWN.
* A process that exits while the environment is idle is recorded at once; the reset it causes
  runs at the next invoke(), init(), shutdown() or context exit (or at once via
  kill_extension()). Lambda freezes an idle environment, so this cannot happen there.
* No Telemetry/Logs API, no SnapStart, no freezing between invocations, one concurrent
  invocation (invoke() calls from several threads queue up).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.lambda_shared import (
    FUNCTION_ARN,
    FUNCTION_NAME,
    FUNCTION_VERSION,
    MEMORY_SIZE_MB,
    REGION,
    REPO_ROOT,
    RUNTIME_PREFIX,
    TRACE_ID,
    JsonHandler,
    LocalServer,
    LoggedProcess,
    epoch_ms,
    runtime_command,
    runtime_environment,
    spawn_logged,
)

EXTENSION_PREFIX = "/2020-01-01/extension"
EXTENSION_EVENTS = ("INVOKE", "SHUTDOWN")
MAX_EXTENSIONS = 10
RUNTIME_SHUTDOWN_MAX_S = 0.3  # docs: up to 300 ms of the shutdown budget for the runtime
RUNTIME_SHUTDOWN_SHARE = 0.3  # the emulator: 30 % of it

# What the invocation (or init) fails with; the emulator's fatal error types, and the error
# type Lambda reports to the caller on a timeout.
TIMEOUT = "Sandbox.Timedout"
EXTENSION_CRASH = "Extension.Crash"
EXTENSION_INIT_ERROR = "Extension.InitError"
EXTENSION_EXIT_ERROR = "Extension.ExitError"
EXTENSION_LAUNCH_ERROR = "Extension.LaunchError"
RUNTIME_EXIT = "Runtime.ExitError"
RUNTIME_UNKNOWN = "Runtime.Unknown"

# The runtime's variables that extensions do not get (docs, "Environment variables"); the
# emulator also drops every name starting with "_".
_RUNTIME_ONLY = frozenset({
    "AWS_EXECUTION_ENV", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_XRAY_CONTEXT_MISSING", "AWS_XRAY_DAEMON_ADDRESS", "LAMBDA_RUNTIME_DIR",
    "LAMBDA_TASK_ROOT",
})
_REAP_WAIT_S = 10.0  # SIGKILLed processes are gone in milliseconds; this only bounds a hang


def _now() -> float:
    return time.monotonic()


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    # Each child leads its own process group: this reaches whatever it started too.
    with suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pid, sig)


# --- the records tests read ---------------------------------------------------------------


@dataclass(eq=False)
class Extension(LoggedProcess):
    """One started extension process (each init starts a new one per file)."""

    name: str  # the executable's file name
    path: Path
    generation: int  # which init started it (1, 2, ... after each reset)
    process: subprocess.Popen[bytes]
    log_path: Path
    started_s: float  # monotonic, just before the process was started
    identifier: str | None = None  # Lambda-Extension-Identifier, once registered
    events: tuple[str, ...] = ()  # what it registered for
    registered_s: float | None = None  # when its successful register call arrived
    registrations: int = 0
    next_calls: int = 0
    next_s: list[float] = field(default_factory=list)  # when each /event/next call arrived
    received: list[dict[str, Any]] = field(default_factory=list)  # events written to it
    init_error: tuple[str, Any] | None = None  # (Lambda-Extension-Function-Error-Type, body)
    exit_error: tuple[str, Any] | None = None
    exit_code: int | None = None  # negative: killed by that signal
    exited_s: float | None = None
    killed: bool = False  # the fake SIGKILLed it (shutdown, reset, kill_extension)
    _queue: deque[dict[str, Any]] = field(default_factory=deque, repr=False)

    @property
    def registered(self) -> bool:
        return self.identifier is not None

    @property
    def alive(self) -> bool:
        return self.exit_code is None

    @property
    def first_next_s(self) -> float | None:
        return self.next_s[0] if self.next_s else None

    def subscribed(self, event: str) -> bool:
        return event in self.events


@dataclass(eq=False)
class Runtime(LoggedProcess):
    """One runtime process (`python -m awslambdaric <handler>`)."""

    generation: int
    process: subprocess.Popen[bytes]
    log_path: Path
    started_s: float  # monotonic, just before the process was started
    next_s: list[float] = field(default_factory=list)  # when each invocation/next arrived
    exit_code: int | None = None
    exited_s: float | None = None
    terminated: bool = False  # got SIGTERM at shutdown
    killed: bool = False  # then SIGKILL: it outlived its share of the shutdown budget

    @property
    def alive(self) -> bool:
        return self.exit_code is None

    @property
    def next_calls(self) -> int:
        return len(self.next_s)

    @property
    def first_next_s(self) -> float | None:
        return self.next_s[0] if self.next_s else None


@dataclass(eq=False)
class Init:
    """One initialisation of the environment (a generation)."""

    generation: int
    started_s: float
    extensions: list[Extension] = field(default_factory=list)
    registered_s: float | None = None  # every extension had registered: the runtime starts
    runtime: Runtime | None = None
    done_s: float | None = None  # the last of the first next calls: init complete
    failure: str | None = None  # the error type it failed with
    error: Any = None  # the error body the caller got

    @property
    def ok(self) -> bool:
        return self.done_s is not None and self.failure is None

    @property
    def duration_ms(self) -> float | None:
        return None if self.done_s is None else (self.done_s - self.started_s) * 1000


@dataclass(eq=False)
class InvokeResult:
    """One invoke(): what the caller got, and when each step happened (monotonic seconds)."""

    request_id: str
    event: Any
    invoked_s: float  # invoke() was called
    init: Init | None = None  # the init this invoke ran first (a cold start), else None
    generation: int | None = None
    deadline_ms: int | None = None  # epoch ms, as in Lambda-Runtime-Deadline-Ms; None: never
    deadline_s: float | None = None  # the same deadline, monotonic      dispatched (init failed)
    dispatched_s: float | None = None  # INVOKE queued for the extensions
    delivered_s: dict[str, float] = field(default_factory=dict)  # INVOKE written, per extension
    handed_out_s: float | None = None  # the runtime got the invocation
    kind: str = "error"  # what the caller got: "response" or "error"
    body: Any = None
    runtime_posted: bool = False  # False: the body is the platform's error, not the runtime's
    posted_s: float = 0.0  # the caller's answer: the runtime's post, else the failure moment
    runtime_done_s: float | None = None  # the runtime called next again
    extension_done_s: dict[str, float] = field(default_factory=dict)  # each called next again
    ended_s: float = 0.0  # the invocation ended (all back at next), or failed
    failure: str | None = None  # the error type that failed it and reset the environment
    _expected: tuple[str, ...] = field(default=(), repr=False)  # INVOKE-subscribed names
    _sent_to: set[str] = field(default_factory=set, repr=False)
    _over: bool = field(default=False, repr=False)  # ended or failed

    @property
    def timed_out(self) -> bool:
        return self.failure == TIMEOUT

    @property
    def error_type(self) -> str | None:
        """The errorType of an error answer (the handler's, or the platform's)."""
        if self.kind == "error" and isinstance(self.body, dict):
            value = self.body.get("errorType")
            return value if isinstance(value, str) else None
        return None

    @property
    def caller_ms(self) -> float:
        """What the caller waited: from invoke() to its answer (init included if cold)."""
        return (self.posted_s - self.invoked_s) * 1000

    @property
    def post_response_ms(self) -> float:
        """From the answer to the end of the invocation: extensions' post-response time."""
        return (self.ended_s - self.posted_s) * 1000

    @property
    def duration_ms(self) -> float | None:
        """From dispatch to the end: what Lambda bills, extensions' post-response time included
        (None if never dispatched)."""
        return None if self.dispatched_s is None else (self.ended_s - self.dispatched_s) * 1000


@dataclass(eq=False)
class Shutdown:
    """One shutdown: spindown, or the reset after a timeout or failure."""

    reason: str  # "spindown", "timeout" or "failure"
    generation: int
    started_s: float
    deadline_ms: int  # epoch ms: what the SHUTDOWN event says
    deadline_s: float  # the same deadline, monotonic
    sent: list[str] = field(default_factory=list)  # extensions sent SHUTDOWN
    killed: list[str] = field(default_factory=list)  # SIGKILLed: unsubscribed, or at deadline
    killed_at_deadline: list[str] = field(default_factory=list)  # still running at deadline
    exit_codes: dict[str, int | None] = field(default_factory=dict)  # per extension
    exited_s: dict[str, float] = field(default_factory=dict)
    runtime_exit_code: int | None = None
    runtime_killed: bool = False
    ended_s: float | None = None


@dataclass(frozen=True)
class Crash:
    """A process that exited outside shutdown."""

    name: str  # the extension's name, or "runtime"
    generation: int
    exit_code: int
    exited_s: float
    failure: str  # what it failed: Extension.Crash, Extension.ExitError, Runtime.ExitError
    phase: str  # "init", "invoke" or "idle"
    request_id: str | None  # the invocation in flight


@dataclass(frozen=True)
class Rejection:
    """An API call the fake refused."""

    path: str
    status: int
    error_type: str
    message: str
    caller: str  # the Lambda-Extension-Name or -Identifier sent, or "runtime"


# --- the engine ----------------------------------------------------------------------------


@dataclass(eq=False)
class _Sandbox:
    """One generation's state: its processes, the invocation in flight, its failure."""

    init: Init
    registration_open: bool = True
    flight: InvokeResult | None = None
    failure: str | None = None
    failure_body: Any = None
    failed_s: float | None = None
    shutting_down: bool = False  # exits are expected now, not crashes
    closed: bool = False

    @property
    def generation(self) -> int:
        return self.init.generation

    def extension_named(self, name: str) -> Extension | None:
        return next((e for e in self.init.extensions if e.name == name), None)

    def extension_with_id(self, identifier: str) -> Extension | None:
        return next((e for e in self.init.extensions if e.identifier == identifier), None)


_Reply = tuple[int, Any, tuple[tuple[str, str], ...]]


class LambdaEnvironment:
    """The control plane and its processes; see the module docstring."""

    def __init__(self, handler: str, *, env: Mapping[str, str],
                 python_path: Sequence[Path | str], log_dir: Path,
                 extensions_dir: Path | None = None, timeout_ms: int = 3000,
                 isolated_path: bool = False, shutdown_budget_ms: int = 2000,
                 init_timeout_ms: int = 10_000) -> None:
        self.handler = handler
        self.env = dict(env)
        self.python_path = list(python_path)
        self.log_dir = log_dir
        self.extensions_dir = extensions_dir
        self.timeout_ms = timeout_ms
        self.isolated_path = isolated_path
        self.shutdown_budget_ms = shutdown_budget_ms
        self.init_timeout_ms = init_timeout_ms
        self.inits: list[Init] = []
        self.invocations: list[InvokeResult] = []
        self.shutdowns: list[Shutdown] = []
        self.crashes: list[Crash] = []
        self.rejections: list[Rejection] = []
        # One lock for all state, shared by the test thread, the HTTP handler threads and the
        # process watchers; every change notifies, so waits are on conditions, never sleeps.
        self._cond = threading.Condition()
        self._ops = threading.RLock()  # one lifecycle operation at a time
        self._sandbox: _Sandbox | None = None
        self._stopping = False
        self._watchers: list[threading.Thread] = []
        self._tag = uuid.uuid4().hex[:6]  # log file names stay unique within one log_dir
        self._scratch = Path(tempfile.mkdtemp(prefix="lambda-control-"))  # extensions' cwds
        self._server = LocalServer(_make_handler(self))

    @property
    def address(self) -> str:
        return self._server.address

    # --- lifecycle, called by tests ----------------------------------------------------------

    def start(self) -> LambdaEnvironment:
        self._server.start()
        return self

    def init(self) -> Init:
        """Initialise now unless an initialised environment is up; returns that init."""
        with self._ops:
            self._reset_if_failed()
            sandbox = self._sandbox
            if sandbox is not None and not sandbox.closed and sandbox.init.ok:
                return sandbox.init
            return self._initialise().init

    def invoke(self, event: Any, *, timeout_ms: int | None = None,
               wait_s: float = 20.0) -> InvokeResult:
        """Invoke once, initialising first if needed. Returns when the invocation ended or
        failed (a failure's reset done). `wait_s` is a safety net: an invocation neither ended
        nor failed that long after dispatch (only when timeout_ms exceeds it) resets the
        environment and raises TimeoutError."""
        result = InvokeResult(str(uuid.uuid4()), event, invoked_s=_now())
        with self._ops:
            self._reset_if_failed()
            sandbox = self._sandbox
            if sandbox is None or sandbox.closed or not sandbox.init.ok:
                sandbox = self._initialise()
                result.init = sandbox.init
            result.generation = sandbox.generation
            if not sandbox.init.ok:
                self._fail_result(result, sandbox.init.failure or RUNTIME_UNKNOWN,
                                  sandbox.init.error, sandbox.failed_s or _now())
            else:
                self._run(sandbox, result,
                          self.timeout_ms if timeout_ms is None else timeout_ms, wait_s)
            with self._cond:
                self.invocations.append(result)
            return result

    def kill_extension(self, name: str) -> Extension:
        """SIGKILL the live extension `name` (its process group): a crash, handled as such."""
        with self._cond:
            sandbox = self._sandbox
            ext = sandbox.extension_named(name) if sandbox is not None else None
            if ext is None or not ext.alive:
                raise LookupError(f"no live extension named {name!r}")
            ext.killed = True
            _kill_group(ext.process.pid)
            self._cond.wait_for(lambda: not ext.alive, _REAP_WAIT_S)
        with self._ops:  # after an invocation in flight, which handles the crash itself
            self._reset_if_failed()
        return ext

    def shutdown(self, reason: str = "spindown") -> Shutdown | None:
        """Shut the environment down (None if nothing runs); the next invoke() re-inits."""
        with self._ops:
            sandbox = self._sandbox
            if sandbox is None or sandbox.closed:
                return None
            return self._shut_down(sandbox, reason)

    def close(self) -> None:
        """Shut down if still up, then stop everything: processes, server, threads."""
        # An invoke stuck in another thread holds self._ops: then skip straight to killing.
        acquired = self._ops.acquire(timeout=30)
        try:
            if acquired:
                self.shutdown()
        finally:
            if acquired:
                self._ops.release()
            self._kill_everything()
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._server.stop()
            for watcher in self._watchers:
                watcher.join(_REAP_WAIT_S)
            shutil.rmtree(self._scratch, ignore_errors=True)

    # --- queries -----------------------------------------------------------------------------

    def extensions(self, name: str | None = None) -> list[Extension]:
        """Every extension process started, in start order (optionally only `name`)."""
        with self._cond:
            return [e for i in self.inits for e in i.extensions if name in (None, e.name)]

    def extension(self, name: str) -> Extension:
        """The latest process started for `name`."""
        found = self.extensions(name)
        if not found:
            raise LookupError(f"no extension named {name!r} was started")
        return found[-1]

    @property
    def runtimes(self) -> list[Runtime]:
        with self._cond:
            return [i.runtime for i in self.inits if i.runtime is not None]

    @property
    def runtime(self) -> Runtime | None:
        """The latest runtime process started."""
        runtimes = self.runtimes
        return runtimes[-1] if runtimes else None

    def registrations(self, name: str) -> int:
        return sum(e.registrations for e in self.extensions(name))

    def next_calls(self, name: str) -> int:
        return sum(e.next_calls for e in self.extensions(name))

    def events_sent(self, name: str) -> list[dict[str, Any]]:
        return [event for e in self.extensions(name) for event in e.received]

    def wait_for(self, predicate: Callable[[], bool], wait_s: float = 10.0) -> bool:
        """Wait until `predicate()` (called with the state locked) is true; False on timeout."""
        end = _now() + wait_s
        with self._cond:
            while not predicate():
                left = end - _now()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))  # also catches changes outside the fake
        return True

    # --- init ----------------------------------------------------------------------------------

    def _initialise(self) -> _Sandbox:
        paths = self._extension_paths()
        with self._cond:
            sandbox = _Sandbox(Init(generation=len(self.inits) + 1, started_s=_now()))
            self._sandbox = sandbox
            self.inits.append(sandbox.init)
        deadline_s = sandbox.init.started_s + self.init_timeout_ms / 1000
        if self._launch_extensions(sandbox, paths) and not self._await_registrations(
                sandbox, deadline_s):
            return sandbox
        if sandbox.failure is None:
            self._launch_runtime(sandbox)
        if sandbox.failure is None:
            self._await_init_done(sandbox, deadline_s)
        if sandbox.failure is not None:
            self._shut_down(sandbox, "timeout" if sandbox.failure == TIMEOUT else "failure")
        with self._cond:
            sandbox.init.failure = sandbox.failure
            sandbox.init.error = sandbox.failure_body
        return sandbox

    def _extension_paths(self) -> list[Path]:
        directory = self.extensions_dir
        if directory is None or not directory.is_dir():
            return []
        return sorted((p for p in directory.iterdir() if not p.is_dir()), key=lambda p: p.name)

    def _launch_extensions(self, sandbox: _Sandbox, paths: list[Path]) -> bool:
        """Start every extension; False (and the init failed) if one could not start."""
        if len(paths) > MAX_EXTENSIONS:
            with self._cond:
                self._fail(sandbox, EXTENSION_LAUNCH_ERROR,
                           f"{len(paths)} extensions: at most {MAX_EXTENSIONS} are allowed")
            return False
        ext_env = self._extension_environment()
        cwd = self._scratch / f"cwd-g{sandbox.generation}"  # empty: Lambda gives them none
        cwd.mkdir()
        for path in paths:
            log_path = self.log_dir / f"{self._tag}-g{sandbox.generation}-ext-{path.name}.log"
            # Under the lock: a fast extension's register must find its record.
            with self._cond:
                started_s = _now()
                try:
                    process = spawn_logged([str(path)], env=ext_env, log_path=log_path,
                                           cwd=cwd, new_session=True)
                except OSError as exc:
                    self._fail(sandbox, EXTENSION_LAUNCH_ERROR, f"{path.name}: {exc}")
                    return False
                ext = Extension(name=path.name, path=path, generation=sandbox.generation,
                                process=process, log_path=log_path, started_s=started_s)
                sandbox.init.extensions.append(ext)
            self._watch(sandbox, ext)
        return True

    def _extension_environment(self) -> dict[str, str]:
        platform = {
            "PATH": os.environ.get("PATH", ""),
            "AWS_LAMBDA_RUNTIME_API": self.address,
            "AWS_LAMBDA_FUNCTION_NAME": FUNCTION_NAME,
            "AWS_LAMBDA_FUNCTION_VERSION": FUNCTION_VERSION,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": MEMORY_SIZE_MB,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
        }
        merged = {**platform, **self.env}  # as for the runtime: the function's own win
        return {k: v for k, v in merged.items()
                if k not in _RUNTIME_ONLY and not k.startswith("_")}

    def _await_registrations(self, sandbox: _Sandbox, deadline_s: float) -> bool:
        """Wait until every extension registered. On timeout the init fails and every
        process is killed (no SHUTDOWN: none is due before registration); returns False."""
        exts = sandbox.init.extensions
        with self._cond:
            self._cond.wait_for(lambda: sandbox.failure is not None
                                or all(e.registered for e in exts), deadline_s - _now())
            if sandbox.failure is not None or all(e.registered for e in exts):
                return True
            late = ", ".join(e.name for e in exts if not e.registered)
            self._fail(sandbox, TIMEOUT, f"init timed out after {self.init_timeout_ms} ms: "
                                         f"extension(s) {late} did not register")
            sandbox.shutting_down = True
            sandbox.init.failure, sandbox.init.error = sandbox.failure, sandbox.failure_body
            for ext in exts:
                ext.killed = ext.alive or ext.killed
                _kill_group(ext.process.pid)
        self._reap(sandbox)
        self._close(sandbox)
        return False

    def _launch_runtime(self, sandbox: _Sandbox) -> None:
        extra = {"_HANDLER": self.handler, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}
        runtime_env = runtime_environment(self.address, self.env, self.python_path,
                                          isolated_path=self.isolated_path, extra=extra)
        log_path = self.log_dir / f"{self._tag}-g{sandbox.generation}-runtime.log"
        command = runtime_command(self.handler, isolated_path=self.isolated_path)
        with self._cond:
            sandbox.registration_open = False  # every extension registered: no more
            sandbox.init.registered_s = _now()
            started_s = _now()
            process = spawn_logged(command, env=runtime_env, log_path=log_path,
                                   new_session=True)
            runtime = Runtime(generation=sandbox.generation, process=process,
                              log_path=log_path, started_s=started_s)
            sandbox.init.runtime = runtime
        self._watch(sandbox, runtime)

    def _await_init_done(self, sandbox: _Sandbox, deadline_s: float) -> None:
        init = sandbox.init
        runtime = init.runtime
        assert runtime is not None

        def done() -> bool:
            return runtime.next_calls > 0 and all(e.next_calls > 0 for e in init.extensions)

        with self._cond:
            self._cond.wait_for(lambda: sandbox.failure is not None or done(),
                                deadline_s - _now())
            if sandbox.failure is not None:
                return
            if not done():
                waiting = [e.name for e in init.extensions if e.next_calls == 0]
                waiting += [] if runtime.next_calls else ["the runtime"]
                self._fail(sandbox, TIMEOUT, f"init timed out after {self.init_timeout_ms} "
                                             f"ms: {', '.join(waiting)} never called next")
                return
            firsts = [runtime.next_s[0], *(e.next_s[0] for e in init.extensions)]
            init.done_s = max(firsts)

    # --- invoke ------------------------------------------------------------------------------

    def _run(self, sandbox: _Sandbox, result: InvokeResult, timeout_ms: int,
             wait_s: float) -> None:
        with self._cond:
            self._dispatch(sandbox, result, timeout_ms)
            deadline_s = result.deadline_s
            assert deadline_s is not None
            give_up_s = _now() + wait_s
            self._cond.wait_for(lambda: result._over or sandbox.failure is not None,
                                min(deadline_s, give_up_s) - _now())
            sandbox.flight = None
            if result._over:
                return
            if sandbox.failure is not None:
                reason = "failure"
                self._fail_result(result, sandbox.failure, sandbox.failure_body,
                                  sandbox.failed_s or _now())
            elif _now() >= deadline_s:
                reason = "timeout"
                message = f"Task timed out after {timeout_ms / 1000:.2f} seconds"
                self._fail(sandbox, TIMEOUT, message)
                self._fail_result(result, TIMEOUT, sandbox.failure_body, _now())
            else:
                reason = "failure"
                self._fail(sandbox, "Test.WaitExceeded", f"not ended within wait_s={wait_s}")
        self._shut_down(sandbox, reason)
        if result.failure is None:
            raise TimeoutError(f"invocation {result.request_id} neither ended nor failed "
                               f"within wait_s={wait_s} s (timeout_ms={timeout_ms})")

    def _dispatch(self, sandbox: _Sandbox, result: InvokeResult, timeout_ms: int) -> None:
        """INVOKE to every INVOKE-subscribed extension; the runtime's next takes it only
        once each of them was written (on_runtime_next)."""
        result.deadline_ms = epoch_ms() + timeout_ms
        result.deadline_s = _now() + timeout_ms / 1000
        result.dispatched_s = _now()
        subscribed = [e for e in sandbox.init.extensions if e.subscribed("INVOKE")]
        result._expected = tuple(e.name for e in subscribed)
        event = {"eventType": "INVOKE", "deadlineMs": result.deadline_ms,
                 "requestId": result.request_id, "invokedFunctionArn": FUNCTION_ARN,
                 "tracing": {"type": "X-Amzn-Trace-Id", "value": TRACE_ID}}
        for ext in subscribed:
            ext._queue.append(dict(event))
        sandbox.flight = result
        self._cond.notify_all()

    def _fail_result(self, result: InvokeResult, failure: str, body: Any, at_s: float) -> None:
        result.failure = failure
        if not result.runtime_posted:  # else the caller already had the runtime's answer
            result.kind, result.body, result.posted_s = "error", body, at_s
        result.ended_s = at_s
        result._over = True

    def _check_ended(self, flight: InvokeResult, at_s: float) -> None:
        """The invocation ends when the runtime and every INVOKE-subscribed extension called
        next again, within the deadline (past it, the invoke thread times it out)."""
        if flight._over or flight.runtime_done_s is None:
            return
        if flight.deadline_s is not None and at_s > flight.deadline_s:
            return
        if all(name in flight.extension_done_s for name in flight._expected):
            flight.ended_s, flight._over = at_s, True
            self._cond.notify_all()

    # --- failure, shutdown, reset --------------------------------------------------------------

    def _fail(self, sandbox: _Sandbox, failure: str, message: str, body: Any = None,
              at_s: float | None = None) -> None:
        """Record the sandbox's first failure (called with the lock held)."""
        if sandbox.failure is None:
            sandbox.failure = failure
            sandbox.failed_s = _now() if at_s is None else at_s
            sandbox.failure_body = body if body is not None else {"errorType": failure,
                                                                  "errorMessage": message}
        self._cond.notify_all()

    def _reset_if_failed(self) -> None:
        """A process died while idle: reset now (with self._ops held)."""
        sandbox = self._sandbox
        if sandbox is not None and not sandbox.closed and sandbox.failure is not None:
            self._shut_down(sandbox, "failure")

    def _shut_down(self, sandbox: _Sandbox, reason: str) -> Shutdown:
        budget_s = self.shutdown_budget_ms / 1000
        with self._cond:
            sandbox.shutting_down = True
            started_s = _now()
            record = Shutdown(reason, sandbox.generation, started_s,
                              deadline_ms=epoch_ms() + self.shutdown_budget_ms,
                              deadline_s=started_s + budget_s)
            self.shutdowns.append(record)
        grace_s = min(RUNTIME_SHUTDOWN_MAX_S, RUNTIME_SHUTDOWN_SHARE * budget_s)
        self._stop_runtime(sandbox, record, min(started_s + grace_s, record.deadline_s))
        self._stop_extensions(sandbox, record)
        self._reap(sandbox)
        with self._cond:
            for ext in sandbox.init.extensions:
                record.exit_codes[ext.name] = ext.exit_code
                if ext.exited_s is not None:
                    record.exited_s[ext.name] = ext.exited_s
            runtime = sandbox.init.runtime
            if runtime is not None:
                record.runtime_exit_code = runtime.exit_code
                record.runtime_killed = runtime.killed
            record.ended_s = _now()
        self._close(sandbox)
        return record

    def _stop_runtime(self, sandbox: _Sandbox, record: Shutdown, kill_at_s: float) -> None:
        runtime = sandbox.init.runtime
        if runtime is None:
            return
        with self._cond:
            if not runtime.alive:
                return
            runtime.terminated = True
            runtime.process.send_signal(signal.SIGTERM)
            self._cond.wait_for(lambda: not runtime.alive, kill_at_s - _now())
            if runtime.alive:
                runtime.killed = True
                _kill_group(runtime.process.pid)

    def _stop_extensions(self, sandbox: _Sandbox, record: Shutdown) -> None:
        exts = sandbox.init.extensions
        with self._cond:
            for ext in exts:
                if not ext.alive:
                    continue
                if (ext.registered and ext.subscribed("SHUTDOWN") and ext.init_error is None
                        and ext.exit_error is None):
                    ext._queue.append({"eventType": "SHUTDOWN", "shutdownReason": record.reason,
                                       "deadlineMs": record.deadline_ms})
                    record.sent.append(ext.name)
                else:  # not subscribed: nothing to wait for (the emulator does the same)
                    self._sigkill_extension(ext, record)
            self._cond.notify_all()
            self._cond.wait_for(lambda: not any(e.alive for e in exts),
                                record.deadline_s - _now())
            for ext in exts:
                if ext.alive:
                    record.killed_at_deadline.append(ext.name)
                    self._sigkill_extension(ext, record)

    def _sigkill_extension(self, ext: Extension, record: Shutdown) -> None:
        ext.killed = True
        record.killed.append(ext.name)
        _kill_group(ext.process.pid)

    def _reap(self, sandbox: _Sandbox) -> None:
        """Wait for the watchers to record every exit of this sandbox (bounded)."""
        procs: list[Extension | Runtime] = list(sandbox.init.extensions)
        if sandbox.init.runtime is not None:
            procs.append(sandbox.init.runtime)
        with self._cond:
            if not self._cond.wait_for(lambda: not any(p.alive for p in procs), _REAP_WAIT_S):
                for proc in procs:
                    _kill_group(proc.process.pid)

    def _close(self, sandbox: _Sandbox) -> None:
        with self._cond:
            sandbox.closed = True
            sandbox.flight = None
            if self._sandbox is sandbox:
                self._sandbox = None
            self._cond.notify_all()  # releases handler threads still parked for it

    def _kill_everything(self) -> None:
        """Last resort at close: SIGKILL whatever still runs."""
        with self._cond:
            procs: list[Extension | Runtime] = [e for i in self.inits for e in i.extensions]
            procs += [i.runtime for i in self.inits if i.runtime is not None]
            for proc in procs:
                if proc.alive:
                    _kill_group(proc.process.pid)
            self._cond.wait_for(lambda: not any(p.alive for p in procs), _REAP_WAIT_S)

    # --- process watchers ----------------------------------------------------------------------

    def _watch(self, sandbox: _Sandbox, proc: Extension | Runtime) -> None:
        watcher = threading.Thread(target=self._await_exit, args=(sandbox, proc), daemon=True,
                                   name=f"lambda-watch-{proc.process.pid}")
        self._watchers.append(watcher)
        watcher.start()

    def _await_exit(self, sandbox: _Sandbox, proc: Extension | Runtime) -> None:
        code = proc.process.wait()
        exited_s = _now()
        # The sandbox dies with its process: reach whatever it left behind in its group now,
        # while the group id cannot yet have been reused.
        _kill_group(proc.process.pid)
        with self._cond:
            proc.exit_code, proc.exited_s = code, exited_s
            if not sandbox.shutting_down and not sandbox.closed:
                self._crashed(sandbox, proc, code, exited_s)
            self._cond.notify_all()

    def _crashed(self, sandbox: _Sandbox, proc: Extension | Runtime, code: int,
                 exited_s: float) -> None:
        if isinstance(proc, Runtime):
            name, failure = "runtime", RUNTIME_EXIT
        else:
            name = proc.name
            failure = EXTENSION_EXIT_ERROR if proc.exit_error else EXTENSION_CRASH
        flight = sandbox.flight
        phase = "init" if sandbox.init.done_s is None else "invoke" if flight else "idle"
        self.crashes.append(Crash(name, sandbox.generation, code, exited_s, failure, phase,
                                  flight.request_id if flight else None))
        self._fail(sandbox, failure, f"{name} exited with code {code}", at_s=exited_s)

    # --- the HTTP side: called from handler threads --------------------------------------------

    def _reject(self, path: str, status: int, error_type: str, message: str,
                caller: str) -> _Reply:
        self.rejections.append(Rejection(path, status, error_type, message, caller))
        return status, {"errorType": error_type, "errorMessage": message}, ()

    def on_register(self, name: str, body: Any, arrived_s: float,
                    accept_feature: str) -> _Reply:
        path = f"{EXTENSION_PREFIX}/register"
        with self._cond:
            if not name:
                return self._reject(path, 403, "Extension.InvalidExtensionName",
                                    "Empty extension name", name)
            events = body.get("events", []) if isinstance(body, dict) else None
            if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
                return self._reject(path, 400, "InvalidRequestFormat",
                                    'expected a JSON body {"events": [...]}', name)
            unknown = [e for e in events if e not in EXTENSION_EVENTS]
            if unknown:
                return self._reject(path, 400, "Extension.InvalidEventType",
                                    f"{unknown[0]}: not one of {', '.join(EXTENSION_EVENTS)}",
                                    name)
            sandbox = self._sandbox
            if sandbox is None or not sandbox.registration_open or sandbox.shutting_down:
                return self._reject(path, 403, "Extension.RegistrationClosed",
                                    "Extension registration closed already", name)
            ext = sandbox.extension_named(name)
            if ext is None:
                started = ", ".join(e.name for e in sandbox.init.extensions) or "none"
                return self._reject(path, 403, "Extension.InvalidExtensionName",
                                    f"{name!r} is not the file name of a started extension "
                                    f"(started: {started})", name)
            if ext.registered:
                return self._reject(path, 403, "Extension.InvalidExtensionState",
                                    f"extension {name} is already registered", name)
            ext.identifier = str(uuid.uuid4())
            ext.events = tuple(events)
            ext.registered_s = arrived_s
            ext.registrations += 1
            self._cond.notify_all()
            reply: dict[str, Any] = {"functionName": FUNCTION_NAME,
                                     "functionVersion": FUNCTION_VERSION,
                                     "handler": self.handler}
            if "accountId" in accept_feature:
                reply["accountId"] = FUNCTION_ARN.split(":")[4]
            return 200, reply, (("Lambda-Extension-Identifier", ext.identifier),)

    def _caller(self, path: str, identifier: str) -> tuple[Extension | None, _Reply | None]:
        """The extension behind a Lambda-Extension-Identifier, else the emulator's 403."""
        if not identifier:
            return None, self._reject(path, 403, "Extension.MissingExtensionIdentifier",
                                      "Missing Lambda-Extension-Identifier header", identifier)
        try:
            uuid.UUID(identifier)
        except ValueError:
            return None, self._reject(path, 403, "Extension.InvalidExtensionIdentifier",
                                      "Invalid Lambda-Extension-Identifier", identifier)
        sandbox = self._sandbox
        ext = sandbox.extension_with_id(identifier) if sandbox is not None else None
        if ext is None:
            return None, self._reject(path, 403, "Extension.UnknownExtensionIdentifier",
                                      f"Unknown extension {identifier}", identifier)
        if ext.init_error is not None or ext.exit_error is not None:
            return None, self._reject(path, 403, "Extension.InvalidExtensionState",
                                      f"{ext.name} reported an error: no further calls",
                                      identifier)
        return ext, None

    def on_extension_next(self, identifier: str, arrived_s: float) -> tuple[
            Extension | None, dict[str, Any] | None, _Reply | None]:
        """Block until the next event for this extension. Returns (extension, event, None),
        or (None, None, refusal), or (extension, None, None) when it is gone or stopping."""
        with self._cond:
            ext, refusal = self._caller(f"{EXTENSION_PREFIX}/event/next", identifier)
            if ext is None:
                return None, None, refusal
            sandbox = self._sandbox
            assert sandbox is not None
            ext.next_calls += 1
            ext.next_s.append(arrived_s)
            flight = sandbox.flight
            if (flight is not None and ext.name in flight._sent_to
                    and ext.name not in flight.extension_done_s):
                flight.extension_done_s[ext.name] = arrived_s
                self._check_ended(flight, arrived_s)
            self._cond.notify_all()
            while not ext._queue:
                if self._stopping or sandbox.closed or not ext.alive:
                    return ext, None, None
                self._cond.wait(1.0)
            event = ext._queue.popleft()
            flight = sandbox.flight  # the one in flight now, not when the call arrived
            if flight is not None and event.get("requestId") == flight.request_id:
                flight._sent_to.add(ext.name)  # its next call from now on ends its part
            return ext, event, None

    def on_extension_delivered(self, ext: Extension, event: dict[str, Any],
                               delivered_s: float) -> None:
        with self._cond:
            ext.received.append(event)
            sandbox = self._sandbox
            flight = sandbox.flight if sandbox is not None else None
            if flight is not None and event.get("requestId") == flight.request_id:
                flight.delivered_s[ext.name] = delivered_s
            self._cond.notify_all()

    def on_extension_error(self, kind: str, identifier: str, error_type: str,
                           body: Any) -> _Reply:
        path = f"{EXTENSION_PREFIX}/{kind}/error"
        with self._cond:
            ext, refusal = self._caller(path, identifier)
            if ext is None:
                assert refusal is not None
                return refusal
            if not error_type:
                return self._reject(path, 403, "Extension.MissingHeader",
                                    "Lambda-Extension-Function-Error-Type not found",
                                    identifier)
            sandbox = self._sandbox
            assert sandbox is not None
            if kind == "init":
                if sandbox.init.done_s is not None:
                    return self._reject(path, 403, "Extension.InvalidExtensionState",
                                        "init/error after init", identifier)
                ext.init_error = (error_type, body)
                self._fail(sandbox, EXTENSION_INIT_ERROR,
                           f"extension {ext.name} failed to initialise: {error_type}")
            else:
                ext.exit_error = (error_type, body)
            self._cond.notify_all()
            return 202, {"status": "OK"}, ()

    def on_runtime_next(self, arrived_s: float) -> InvokeResult | None:
        """Block until the next invocation may go to the runtime (None: gone or stopping)."""
        with self._cond:
            sandbox = self._sandbox
            runtime = sandbox.init.runtime if sandbox is not None else None
            if sandbox is None or runtime is None:
                return None
            runtime.next_s.append(arrived_s)
            flight = sandbox.flight
            if flight is not None and flight.runtime_posted and flight.runtime_done_s is None:
                flight.runtime_done_s = arrived_s
                self._check_ended(flight, arrived_s)
            self._cond.notify_all()
            while True:
                flight = sandbox.flight
                if (flight is not None and flight.handed_out_s is None
                        and sandbox.failure is None
                        and all(n in flight.delivered_s for n in flight._expected)):
                    flight.handed_out_s = _now()
                    self._cond.notify_all()
                    return flight
                if self._stopping or sandbox.closed or not runtime.alive:
                    return None
                self._cond.wait(1.0)

    def on_runtime_post(self, request_id: str, kind: str, body: Any,
                        arrived_s: float) -> _Reply:
        path = f"{RUNTIME_PREFIX}/invocation/{request_id}/{kind}"
        with self._cond:
            sandbox = self._sandbox
            flight = sandbox.flight if sandbox is not None else None
            if (flight is None or flight.request_id != request_id
                    or flight.handed_out_s is None or flight.runtime_posted):
                return self._reject(path, 400, "InvalidRequestID", "Invalid request ID",
                                    "runtime")
            deadline_s = flight.deadline_s
            if flight.failure is None and (deadline_s is None or arrived_s <= deadline_s):
                # Past the deadline the caller already got the timeout: too late to count.
                flight.runtime_posted = True
                flight.kind, flight.body, flight.posted_s = kind, body, arrived_s
            self._cond.notify_all()
            return 202, {"status": "OK"}, ()

    def on_runtime_init_error(self, body: Any) -> _Reply:
        with self._cond:
            sandbox = self._sandbox
            if sandbox is not None:
                error_type = body.get("errorType") if isinstance(body, dict) else None
                self._fail(sandbox, error_type if isinstance(error_type, str)
                           else RUNTIME_UNKNOWN, "the runtime failed to initialise", body)
            return 202, {"status": "OK"}, ()


def _make_handler(control: LambdaEnvironment) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def on_get(self) -> None:
            arrived_s = _now()
            if self.path == f"{RUNTIME_PREFIX}/invocation/next":
                self._runtime_next(arrived_s)
            elif self.path == f"{EXTENSION_PREFIX}/event/next":
                self._extension_next(arrived_s)
            else:
                self.reply(404, {"errorType": "NotFound", "errorMessage": self.path})

        def on_post(self) -> None:
            body = self.read_body()
            arrived_s = _now()  # the whole request is in: the post has happened
            headers = self.headers
            identifier = headers.get("Lambda-Extension-Identifier") or ""
            parts = self.path.strip("/").split("/")
            if self.path == f"{EXTENSION_PREFIX}/register":
                self._send(control.on_register(headers.get("Lambda-Extension-Name") or "", body,
                                               arrived_s,
                                               headers.get("Lambda-Extension-Accept-Feature")
                                               or ""))
            elif self.path in (f"{EXTENSION_PREFIX}/init/error",
                               f"{EXTENSION_PREFIX}/exit/error"):
                error_type = headers.get("Lambda-Extension-Function-Error-Type") or ""
                self._send(control.on_extension_error(parts[2], identifier, error_type, body))
            elif self.path == f"{RUNTIME_PREFIX}/init/error":
                self._send(control.on_runtime_init_error(body))
            elif (len(parts) == 5 and self.path.startswith(f"{RUNTIME_PREFIX}/invocation/")
                  and parts[4] in ("response", "error")):
                self._send(control.on_runtime_post(parts[3], parts[4], body, arrived_s))
            else:
                self.reply(404, {"errorType": "NotFound", "errorMessage": self.path})

        def _send(self, reply: _Reply) -> None:
            status, payload, headers = reply
            self.reply(status, payload, headers)

        def _runtime_next(self, arrived_s: float) -> None:
            flight = control.on_runtime_next(arrived_s)
            if flight is None:  # its sandbox is gone: drop the connection
                self.close_connection = True
                return
            assert flight.deadline_ms is not None
            self.send_invocation(flight.request_id, flight.deadline_ms, flight.event)

        def _extension_next(self, arrived_s: float) -> None:
            identifier = self.headers.get("Lambda-Extension-Identifier") or ""
            ext, event, refusal = control.on_extension_next(identifier, arrived_s)
            if refusal is not None:
                self._send(refusal)
                return
            if ext is None or event is None:
                self.close_connection = True
                return
            headers: Iterable[tuple[str, str]] = (
                ("Lambda-Extension-Event-Identifier", str(uuid.uuid4())),
                ("Lambda-Extension-Identifier", identifier))
            try:
                self.reply(200, event, headers)
            except OSError:  # it died meanwhile; its watcher reports the exit
                return
            control.on_extension_delivered(ext, event, _now())

    return Handler


@contextmanager
def lambda_environment(handler: str, *, env: Mapping[str, str],
                       python_path: Sequence[Path | str], log_dir: Path,
                       extensions_dir: Path | None = None, timeout_ms: int = 3000,
                       isolated_path: bool = False, shutdown_budget_ms: int = 2000,
                       init_timeout_ms: int = 10_000) -> Iterator[LambdaEnvironment]:
    """A fresh control plane for `handler` and the extensions in `extensions_dir`; nothing
    starts before the first invoke() (or init()); everything is stopped at exit."""
    environment = LambdaEnvironment(
        handler, env=env, python_path=python_path, log_dir=log_dir,
        extensions_dir=extensions_dir, timeout_ms=timeout_ms, isolated_path=isolated_path,
        shutdown_budget_ms=shutdown_budget_ms, init_timeout_ms=init_timeout_ms).start()
    try:
        yield environment
    finally:
        environment.close()


def source_extension_layer(folder: Path) -> Path:
    """amp-lite's extension layer laid out over this checkout, in `folder`/layer:
    extensions/amp-lite, and python/ with amp_lite and urllib3, as the built layer has them
    (the extension runs with -S: the layer is all it has). For tests and benchmarks that must
    run the current source, not a build."""
    import urllib3

    layer = folder / "layer"
    (layer / "extensions").mkdir(parents=True)
    (layer / "python").mkdir()
    shutil.copy2(REPO_ROOT / "layers" / "extensions" / "amp-lite", layer / "extensions")
    (layer / "python" / "amp_lite").symlink_to(REPO_ROOT / "amp_lite")
    (layer / "python" / "urllib3").symlink_to(Path(urllib3.__file__).parent)
    return layer
