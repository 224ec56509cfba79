"""The Lambda function of the fault matrix (tests/integration/test_fault_matrix.py).

Run by the real awslambdaric runtime client as `matrix_handler.handler`. An invocation event:

    {"server_url": "http://127.0.0.1:PORT/2/httpapi", "cell": "503",
     "events": [{"user_id": "matrix-user-0"}, ...], "start_thread": false}

`_track_events`, decorated with `@amp_lite.amplitude_flush`, tracks one event per entry and
returns their insert_ids; the decorator flushes them in its `finally`, after `_track_events`
returned. `handler` wraps that call, so what it measures covers the flush too:

- `threads_started`: the names of the threads whose `threading.Thread.start` was called during the
  invocation (the method is wrapped when this module is imported, before any invocation), and
  `new_threads`: threads alive after the call that were not alive before it. `start_thread: true`
  starts one thread inside the handler, to prove the detector sees a thread when there is one.
- `refused_lookups` / `refused_connects`: this process never leaves the loopback interface. Host
  names other than `localhost` are refused by the resolver in the process itself (a
  `socket.gaierror`, as an NXDOMAIN gives, raised before glibc would send a DNS query to the
  configured name server), and a TCP connect to a non-loopback address is refused with
  ENETUNREACH. Both are recorded, so a test can see which lookups were refused.

The client is picked by `server_url` (one per URL, kept across warm invocations, so keep-alive
connections survive between invocations as they do on Lambda) and set as the default client
before the decorated function runs. Every client overflows as the default client does — to SQS
when AMP_LITE_OVERFLOW_QUEUE_URL is set, then to a local spill — except that all of them share
one spill directory, AMP_LITE_SPILL_DIR itself: a test can then recover events spilled while the
server was unreachable (connection refused, DNS failure) with a client of a reachable server.
The API key comes from AMPLITUDE_API_KEY, as for the default client.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import amp_lite
from amp_lite._config import ENV_QUEUE_URL
from amp_lite.overflow import LocalSpill, OverflowSink, SQSOverflow

ENV_SPILL_DIR = "AMP_LITE_SPILL_DIR"
EVENT_TYPE = "Matrix Event"


@dataclass
class _Watch:
    thread_starts: list[str] = field(default_factory=list)
    refused_lookups: list[str] = field(default_factory=list)
    refused_connects: list[str] = field(default_factory=list)


WATCH = _Watch()

# -- the thread detector ----------------------------------------------------------------------

_original_start = threading.Thread.start


def _counting_start(self: threading.Thread) -> None:
    WATCH.thread_starts.append(self.name)
    _original_start(self)


threading.Thread.start = _counting_start  # type: ignore[method-assign]

# -- loopback only ----------------------------------------------------------------------------


def _is_loopback(host: Any) -> bool:
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False


_original_getaddrinfo = socket.getaddrinfo


def _loopback_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    if host is None or _is_loopback(host):
        return _original_getaddrinfo(host, port, *args, **kwargs)
    WATCH.refused_lookups.append(host.decode() if isinstance(host, bytes) else str(host))
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex


def _guard_address(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        WATCH.refused_connects.append(str(address[0]))
        raise OSError(errno.ENETUNREACH, f"matrix_handler: {address[0]} is not loopback")


def _loopback_connect(self: socket.socket, address: Any) -> None:
    _guard_address(self, address)
    _original_connect(self, address)


def _loopback_connect_ex(self: socket.socket, address: Any) -> int:
    _guard_address(self, address)
    return _original_connect_ex(self, address)


socket.getaddrinfo = _loopback_getaddrinfo
socket.socket.connect = _loopback_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _loopback_connect_ex  # type: ignore[method-assign]

# -- clients ----------------------------------------------------------------------------------

_clients: dict[str, amp_lite.Amplitude] = {}
_sinks: list[tuple[OverflowSink, ...]] = []


def _overflow_sinks() -> tuple[OverflowSink, ...]:
    if not _sinks:
        spill = LocalSpill(Path(os.environ[ENV_SPILL_DIR]))
        queue_url = os.environ.get(ENV_QUEUE_URL)
        _sinks.append((SQSOverflow(queue_url), spill) if queue_url else (spill,))
    return _sinks[0]


def client_for(server_url: str) -> amp_lite.Amplitude:
    client = _clients.get(server_url)
    if client is None:
        client = _clients[server_url] = amp_lite.Amplitude(server_url=server_url,
                                                           overflow=_overflow_sinks())
    return client


# -- the function -----------------------------------------------------------------------------


@amp_lite.amplitude_flush
def _track_events(event: dict[str, Any], context: Any) -> dict[str, Any]:
    insert_ids = []
    for n, spec in enumerate(event.get("events", [])):
        insert_ids.append(amp_lite.track(EVENT_TYPE, user_id=spec["user_id"],
                                         event_properties={"cell": event.get("cell"), "n": n}))
    if event.get("start_thread"):
        thread = threading.Thread(target=lambda: None, name="matrix-self-check")
        thread.start()
        thread.join()
    return {"insert_ids": insert_ids}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    starts = len(WATCH.thread_starts)
    lookups = len(WATCH.refused_lookups)
    connects = len(WATCH.refused_connects)
    alive_before = {thread.ident for thread in threading.enumerate()}
    amp_lite.set_client(client_for(event["server_url"]))
    result = _track_events(event, context)  # returns after the decorator's flush
    return {
        **result,
        "threads_started": WATCH.thread_starts[starts:],
        "new_threads": [thread.name for thread in threading.enumerate()
                        if thread.ident not in alive_before],
        "refused_lookups": WATCH.refused_lookups[lookups:],
        "refused_connects": WATCH.refused_connects[connects:],
    }
