"""Tiny external extensions for tests of the Lambda control-plane fake (lambda_control).

`write_extension(directory, name, ...)` writes an executable Python script (`#!<this Python>`,
mode 0755, standard library only) that speaks the Extensions API: it registers, then loops on
/event/next, behaving as configured. It prints one JSON line per step to stdout (flushed), each
with its own `time.monotonic()` stamp `t`; `steps(output)` parses them back:

    {"step": "start", "pid", "cwd", "cwd_entries", "env"}          at start
    {"step": "child", "pid"}                                        spawned a child (spawn_child)
    {"step": "register", "status", "body", "identifier"}            the register reply
    {"step": "init_error" | "exit_error", "status", "body"}         those replies
    {"step": "event", "status", "event"}                            each /event/next reply
    {"step": "exit", "code"}                                        just before exiting

Misbehaviour on INVOKE (`invoke_sleep_ms`, `exit_on_invoke`, `exit_error_on_invoke`) can be
limited to the first process with `once=<marker file>`: the first process to misbehave creates
the marker, so the process started after the reset behaves.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_SCRIPT = r'''#!{python}
import json, os, subprocess, sys, time, urllib.error, urllib.request

CONFIG = json.loads({config!r})
API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2020-01-01/extension"


def log(step, **fields):
    print(json.dumps({{"step": step, "t": time.monotonic(), **fields}}), flush=True)


def call(method, path, headers, body=None):
    request = urllib.request.Request(API + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.headers, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read() or b"null")


def leave(code):
    log("exit", code=code)
    sys.exit(code)


def misbehave_now():
    marker = CONFIG["once"]
    if marker is None:
        return True
    if os.path.exists(marker):
        return False
    open(marker, "w").close()
    return True


log("start", pid=os.getpid(), cwd=os.getcwd(), cwd_entries=sorted(os.listdir(".")),
    env=dict(os.environ))
if CONFIG["spawn_child"]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    log("child", pid=child.pid)
time.sleep(CONFIG["register_delay_ms"] / 1000)
name = CONFIG["register_as"] or os.path.basename(__file__)
status, headers, body = call("POST", "/register", {{"Lambda-Extension-Name": name}},
                             json.dumps({{"events": CONFIG["events"]}}).encode())
identifier = headers.get("Lambda-Extension-Identifier")
log("register", status=status, body=body, identifier=identifier)
if status != 200:
    leave(1)
me = {{"Lambda-Extension-Identifier": identifier}}
if CONFIG["init_error"]:
    status, _, body = call("POST", "/init/error",
                           {{**me, "Lambda-Extension-Function-Error-Type": CONFIG["init_error"]}},
                           json.dumps({{"errorType": CONFIG["init_error"]}}).encode())
    log("init_error", status=status, body=body)
    time.sleep(120)  # the docs say to exit; stay, to show the fake fails the init by itself
while True:
    status, _, event = call("GET", "/event/next", me)
    log("event", status=status, event=event)
    if status != 200:
        leave(2)
    if event["eventType"] == "SHUTDOWN":
        time.sleep(CONFIG["shutdown_sleep_ms"] / 1000)
        leave(CONFIG["shutdown_exit_code"])
    if CONFIG["exit_error_on_invoke"] and misbehave_now():
        status, _, body = call("POST", "/exit/error",
                               {{**me, "Lambda-Extension-Function-Error-Type":
                                 CONFIG["exit_error_on_invoke"]}}, b"{{}}")
        log("exit_error", status=status, body=body)
        leave(1)
    if CONFIG["exit_on_invoke"] is not None and misbehave_now():
        leave(CONFIG["exit_on_invoke"])
    if CONFIG["invoke_sleep_ms"] and misbehave_now():
        time.sleep(CONFIG["invoke_sleep_ms"] / 1000)
'''


def write_extension(directory: Path, name: str, *, events: Sequence[str] = ("INVOKE", "SHUTDOWN"),
                    register_as: str | None = None, register_delay_ms: int = 0,
                    invoke_sleep_ms: int = 0, exit_on_invoke: int | None = None,
                    exit_error_on_invoke: str | None = None, init_error: str | None = None,
                    shutdown_sleep_ms: int = 0, shutdown_exit_code: int = 0,
                    spawn_child: bool = False, once: Path | None = None) -> Path:
    """Write the extension `directory/name`.

    `events`: what it registers for; `register_as`: the Lambda-Extension-Name it sends
    (default: its file name); `register_delay_ms`: sleep before registering; on each INVOKE,
    `invoke_sleep_ms` before calling next again, or `exit_on_invoke` (an exit code), or
    `exit_error_on_invoke` (POST /exit/error with that error type, then exit 1); `init_error`:
    POST /init/error with that type right after registering; on SHUTDOWN, sleep
    `shutdown_sleep_ms` then exit `shutdown_exit_code`; `spawn_child`: start a long-sleeping
    child first (in its process group); `once`: a marker file limiting the INVOKE
    misbehaviour to the first process.
    """
    config = {"events": list(events), "register_as": register_as,
              "register_delay_ms": register_delay_ms, "invoke_sleep_ms": invoke_sleep_ms,
              "exit_on_invoke": exit_on_invoke, "exit_error_on_invoke": exit_error_on_invoke,
              "init_error": init_error, "shutdown_sleep_ms": shutdown_sleep_ms,
              "shutdown_exit_code": shutdown_exit_code, "spawn_child": spawn_child,
              "once": None if once is None else str(once)}
    path = directory / name
    path.write_text(_SCRIPT.format(python=sys.executable, config=json.dumps(config)))
    path.chmod(0o755)
    return path


def steps(output: str, step: str | None = None) -> list[dict[str, Any]]:
    """The JSON step lines of an extension's output (optionally only one kind of step)."""
    parsed = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [p for p in parsed if step in (None, p["step"])]
