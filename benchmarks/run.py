"""amp-lite against the official Python SDK (amplitude-analytics), side by side.

    python benchmarks/run.py [--quick] [--reps N] [--json PATH]

Runs every scenario of issue 7 for both SDKs, alternating them (amp-lite, official, amp-lite,
official, ...) for several repetitions, against a local collector (benchmarks/collector.py, in
its own process, on 127.0.0.1). Prints a table of medians, spreads (min..max over repetitions),
ratios amp-lite/official and targets, and writes every raw number plus a machine description
to a JSON file. Every run checks at the collector that it received every event of that run,
exactly, and the command fails (exit status 2) when one did not.

What "delivered" means: for amp-lite, `flush()` (or the invocation scope) reported every event
delivered; for the official SDK, the futures of its `flush()` were waited on (and, where its
consumer thread sent batches on its own, the collector's count was waited on). Then the
benchmark confirms at the collector, for both.

Scenarios (sizes of the full run; --quick shrinks them):

1. track() cost per event, in process, no network during the timed loop: 20,000 events.
2. Warm invocations over TLS: 10 events then a flush, 200 invocations in sequence on one client,
   after one untimed invocation that opens the connection; latency median and p99, and the
   TCP+TLS connections the collector accepted for the whole run.
3. Cold invocation, each in a fresh interpreter, over TLS: timed inside the child from just
   before the SDK import to delivery confirmed (10 events); bare, and with boto3 imported first.
4. Bulk in a fresh interpreter over plain HTTP: 10,000 and 100,000 events tracked and flushed.
   Wall time from just after import and construction to delivery (import cost belongs to
   scenario 3), events/s, and peak RSS: the child's high-water mark (VmHWM, /proc/self/status;
   ru_maxrss where there is no /proc) at the end minus the same after import and construction
   (the memory the events cost), plus the absolute peak. Not ru_maxrss on Linux: it survives
   exec(), so a child's starts at the benchmark process's own peak.
5. Replay (amp-lite only): SQS-shaped records through `amp_lite.replay.make_handler` to the
   collector over plain HTTP, against the cost of only `json.dumps` of the same event dicts.
6. Cold invocation from a layer, as Lambda runs one: amp-lite's built layer (layers/build.py,
   for this interpreter's runtime) and the official SDK installed the same way (its installed
   package copied into an empty folder, compiled by the same `compileall --invalidation-mode
   unchecked-hash`), each unzipped or copied read-only, imported by a fresh `python -S` with
   PYTHONDONTWRITEBYTECODE=1, only that folder then this environment's site-packages (where
   Lambda's boto3/botocore live) on the path, from an empty working directory. Timed as in 3
   (import, construct, track 10, flush over TLS, delivered); bare, with botocore.session
   imported first (what `import boto3` loads, urllib3 with it: nearly every Python function
   on Lambda), and from the sources alone
   (the same folders without their bytecode: what a layer without .pyc costs each cold start).
   With botocore loaded, the child also times what both SDKs spend loading the CA bundle
   (ssl.SSLContext.load_verify_locations and set_default_verify_paths): the floor under both.
7. The Lambda extension (amp-lite only): a decorated handler tracking 10 events under the
   control-plane fake of the tests (tests/support/lambda_control.py: the real awslambdaric,
   the extension started from this checkout laid out as the extension layer), the collector
   answering each request after 50 ms. Per warm invocation: what the caller waits for
   (invoke to the runtime's post) and the billed duration (to the end of the invocation), in
   extension mode against in-function delivery (AMP_LITE_EXTENSION off, no extension); in
   extension mode the hand-off itself (HandOff.send, timed in the function, every one checked
   taken) and the post-response time; and the extension's start to its registration, once per
   repetition (a cold start).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import importlib.metadata
import json
import math
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import amplitude
from amplitude.constants import PluginType

import amp_lite
from amp_lite.overflow._message import message_attributes, pack_messages
from amp_lite.replay import make_handler

HERE = Path(__file__).resolve().parent
API_KEY = "bench-api-key-0123456789abcdef"
AMP, OFFICIAL = "amp_lite", "official"
DECORATOR = "amp_lite_decorator"  # scenario 7's baseline: amp-lite flushing in the function
SDKS = (AMP, OFFICIAL)
DELIVERY_TIMEOUT_S = 120.0
CHILD_TIMEOUT_S = 600.0
WARMUP_EVENTS = 50  # tracked before scenario 1's timed loop (first-call costs), flushed with it
EVENTS_PER_INVOCATION = 10
OFFICIAL_QUEUE_SIZE = 200  # amplitude-analytics' default flush_queue_size
OFFICIAL_SHORT_INTERVAL_MS = 100  # keeps a child process from lingering on its consumer thread
OFFICIAL_DEFAULT_INTERVAL_MS = 10_000  # the official default: what a Lambda user runs with
OFFICIAL_IDLE_INTERVAL_MS = 600_000  # scenario 1: the consumer thread must not send mid-loop


@dataclass(frozen=True)
class Sizes:
    reps: int
    track_events: int
    warm_invocations: int
    bulk: tuple[int, ...]
    replay_events: int


FULL = Sizes(reps=5, track_events=20_000, warm_invocations=200, bulk=(10_000, 100_000),
             replay_events=20_000)
QUICK = Sizes(reps=2, track_events=500, warm_invocations=20, bulk=(1_000,), replay_events=1_000)


class DeliveryError(RuntimeError):
    """The collector did not receive every event of a run (or an SDK said it did not send)."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise DeliveryError(message)


# -- the collector and its control channel -----------------------------------------------------


class Control:
    """Talks to the collector's control listener over one kept-alive connection."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                                timeout=DELIVERY_TIMEOUT_S + 30)
        self.checks: list[dict[str, Any]] = []

    def _call(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        self._conn.request(method, path)
        response = self._conn.getresponse()
        return response.status, json.loads(response.read())

    def reset(self) -> None:
        self._call("POST", "/reset")

    def latency(self, ms: float) -> None:
        """Every ingestion request from now on is answered after `ms`."""
        self._call("POST", f"/latency?ms={ms}")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")[1]

    def confirm(self, expected: int, what: str) -> dict[str, Any]:
        """Wait (on the collector's condition, not a sleep) for `expected` events; they must be
        exactly that many, in well-formed requests."""
        _, stats = self._call("GET", f"/wait?events={expected}&timeout_s={DELIVERY_TIMEOUT_S}")
        self.checks.append({"run": what, "expected": expected, "received": stats["events"]})
        require(stats["events"] == expected and stats["bad_requests"] == 0,
                f"{what}: the collector received {stats['events']} of {expected} events "
                f"({stats['bad_requests']} malformed requests) within {DELIVERY_TIMEOUT_S:.0f} s")
        return stats

    def close(self) -> None:
        self._conn.close()


@dataclass
class Env:
    http_url: str
    https_url: str
    control_url: str
    ca_cert: str
    control: Control


def start_collector() -> tuple[subprocess.Popen[str], Env]:
    proc = subprocess.Popen([sys.executable, str(HERE / "collector.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("the collector did not start (no address line on its stdout)")
    info = json.loads(line)
    env = Env(info["http_url"], info["https_url"], info["control_url"], info["ca_cert"],
              Control(info["control_url"]))
    # The official SDK (urllib) trusts what OpenSSL's default paths name: SSL_CERT_FILE.
    os.environ["SSL_CERT_FILE"] = env.ca_cert
    check_official_trusts_collector(env)
    return proc, env


def check_official_trusts_collector(env: Env) -> None:
    """urllib builds a default context per connection; it must verify against our CA."""
    context = ssl.create_default_context()
    require(any(c.get("subject") == ((("commonName", "amp-lite benchmark CA"),),)
                for c in context.get_ca_certs()),
            "SSL_CERT_FILE is not honoured by ssl.create_default_context(): the official SDK "
            "could not verify the collector")


def stop_collector(proc: subprocess.Popen[str], env: Env) -> None:
    env.control.close()
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- results -----------------------------------------------------------------------------------


@dataclass
class Results:
    # scenario -> sdk -> metric -> one value per repetition
    samples: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, scenario: str, sdk: str, metric: str, value: float) -> None:
        sdks = self.samples.setdefault(scenario, {})
        sdks.setdefault(sdk, {}).setdefault(metric, []).append(value)

    def add_raw(self, scenario: str, sdk: str, name: str, values: list[float]) -> None:
        sdks = self.raw.setdefault(scenario, {})
        sdks.setdefault(sdk, {}).setdefault(name, []).append(values)

    def values(self, scenario: str, sdk: str, metric: str) -> list[float]:
        return self.samples.get(scenario, {}).get(sdk, {}).get(metric, [])


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def user(i: int) -> str:
    return f"user-{i % 100:04d}"


# -- the official SDK, made usable -----------------------------------------------------------


def official_client(url: str, *, queue_size: int = OFFICIAL_QUEUE_SIZE,
                    interval_ms: int = OFFICIAL_SHORT_INTERVAL_MS) -> amplitude.Amplitude:
    return amplitude.Amplitude(API_KEY, amplitude.Config(
        server_url=url, flush_queue_size=queue_size, flush_interval_millis=interval_ms))


def official_flush(client: amplitude.Amplitude) -> None:
    """What 'delivered' means for the official SDK: its flush() futures resolved."""
    for future in client.flush():
        if future is not None:
            future.result(timeout=DELIVERY_TIMEOUT_S)


def official_close(client: amplitude.Amplitude) -> None:
    """shutdown(), then wake the consumer thread from its flush_interval wait so that it ends
    now (it is not woken by shutdown and would otherwise keep the process alive)."""
    client.shutdown()
    timeline = client._Amplitude__timeline
    for destination in timeline.plugins[PluginType.DESTINATION]:
        storage = getattr(destination, "storage", None)
        if storage is not None:
            with storage.lock:
                storage.lock.notify_all()


# -- scenario 1: track() cost ------------------------------------------------------------------


def track_cost_amp(env: Env, n: int) -> float:
    client = amp_lite.Amplitude(API_KEY, server_url=env.http_url, overflow=())
    for i in range(WARMUP_EVENTS):
        client.track("Warm Up", user_id=user(i), event_properties={"index": i})
    started = time.perf_counter()
    for i in range(n):
        client.track("Button Clicked", user_id=user(i),
                     event_properties={"plan": "pro", "index": i, "path": "/home"})
    elapsed = time.perf_counter() - started
    report = client.flush(timeout_s=DELIVERY_TIMEOUT_S)
    require(report.delivered == n + WARMUP_EVENTS, f"track cost, amp_lite: {report}")
    client.close()
    return elapsed / n * 1e6


def track_cost_official(env: Env, n: int) -> float:
    client = official_client(env.http_url, queue_size=n + WARMUP_EVENTS + 1,
                             interval_ms=OFFICIAL_IDLE_INTERVAL_MS)
    event = amplitude.BaseEvent
    try:
        for i in range(WARMUP_EVENTS):
            client.track(event("Warm Up", user_id=user(i), event_properties={"index": i}))
        started = time.perf_counter()
        for i in range(n):
            client.track(event("Button Clicked", user_id=user(i),
                               event_properties={"plan": "pro", "index": i, "path": "/home"}))
        elapsed = time.perf_counter() - started
        official_flush(client)
    finally:
        official_close(client)
    return elapsed / n * 1e6


def scenario_track(env: Env, sizes: Sizes, results: Results) -> None:
    runners = {AMP: track_cost_amp, OFFICIAL: track_cost_official}
    for rep in range(sizes.reps):
        for sdk in SDKS:
            env.control.reset()
            per_event_us = runners[sdk](env, sizes.track_events)
            env.control.confirm(sizes.track_events + WARMUP_EVENTS, f"1 track {sdk} rep {rep}")
            results.add("1_track", sdk, "per_event_us", per_event_us)
    progress("1 track() cost: done")


# -- scenario 2: warm invocations --------------------------------------------------------------


def warm_amp(env: Env, invocations: int) -> list[float]:
    client = amp_lite.Amplitude(API_KEY, server_url=env.https_url, overflow=(),
                                ca_certs=env.ca_cert)

    def invoke(k: int) -> float:
        started = time.perf_counter()
        with client.invocation(timeout_s=30) as inv:
            for i in range(EVENTS_PER_INVOCATION):
                client.track("Page Viewed", user_id=user(k),
                             event_properties={"page": "/pricing", "index": i})
        elapsed = time.perf_counter() - started
        require(inv.report is not None and inv.report.delivered == EVENTS_PER_INVOCATION,
                f"warm invocation {k}, amp_lite: {inv.report}")
        return elapsed

    invoke(-1)  # opens the connection; counted in connections, not in latencies
    latencies = [invoke(k) for k in range(invocations)]
    client.close()
    return latencies


def warm_official(env: Env, invocations: int) -> list[float]:
    client = official_client(env.https_url, interval_ms=OFFICIAL_DEFAULT_INTERVAL_MS)
    event = amplitude.BaseEvent

    def invoke(k: int) -> float:
        started = time.perf_counter()
        for i in range(EVENTS_PER_INVOCATION):
            client.track(event("Page Viewed", user_id=user(k),
                               event_properties={"page": "/pricing", "index": i}))
        official_flush(client)
        return time.perf_counter() - started

    try:
        invoke(-1)
        return [invoke(k) for k in range(invocations)]
    finally:
        official_close(client)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def scenario_warm(env: Env, sizes: Sizes, results: Results) -> None:
    runners = {AMP: warm_amp, OFFICIAL: warm_official}
    expected = (sizes.warm_invocations + 1) * EVENTS_PER_INVOCATION
    for rep in range(sizes.reps):
        for sdk in SDKS:
            env.control.reset()
            latencies_ms = [s * 1000 for s in runners[sdk](env, sizes.warm_invocations)]
            stats = env.control.confirm(expected, f"2 warm {sdk} rep {rep}")
            results.add("2_warm", sdk, "median_ms", statistics.median(latencies_ms))
            results.add("2_warm", sdk, "p99_ms", percentile(latencies_ms, 99))
            results.add("2_warm", sdk, "connections", stats["connections"]["https"])
            results.add_raw("2_warm", sdk, "latencies_ms", latencies_ms)
    progress("2 warm invocations: done")


# -- scenarios 3 and 4: fresh interpreters -----------------------------------------------------

# Runs with `python -c`. Before t0 only builtins/preloaded modules (os, sys, time, resource) and,
# for the boto3 variant, boto3. The official SDK's time ends when its flush() futures resolve;
# when its consumer thread sent batches by itself (more events than flush_queue_size), those
# are behind no future, so it also waits for the collector's count before stopping the clock.
CHILD_CODE = r"""
import os, sys, time, resource
env = os.environ
def peak_rss_kb():
    # VmHWM is this process's own high-water mark; ru_maxrss survives exec(), so a child's
    # starts at its parent's peak (here ~46 MB) and hides everything below it.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if env["BENCH_PRE"]:
    __import__(env["BENCH_PRE"])
# The time spent loading the CA bundle, which both SDKs pay: measured where the pre-import has
# loaded ssl already (importing it here would take its cost out of the bare timings).
trust_s = [0.0 if "ssl" in sys.modules else None]
def timed(method):
    def loading_trust(*args, **kwargs):
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            trust_s[0] += time.perf_counter() - started
    return loading_trust
if trust_s[0] is not None:
    SSLContext = sys.modules["ssl"].SSLContext
    for name in ("load_verify_locations", "set_default_verify_paths"):
        setattr(SSLContext, name, timed(getattr(SSLContext, name)))
modules_before = len(sys.modules)
n, url = int(env["BENCH_N"]), env["BENCH_URL"]
ca = env["BENCH_CA"] or None
t0 = time.perf_counter()
if env["BENCH_SDK"] == "amp_lite":
    import amp_lite
    t_import = time.perf_counter()
    client = amp_lite.Amplitude(env["BENCH_KEY"], server_url=url, overflow=(), ca_certs=ca)
    rss_base = peak_rss_kb()
    t_start = time.perf_counter()
    for i in range(n):
        client.track("Bench Event", user_id=f"user-{i % 100:04d}",
                     event_properties={"plan": "pro", "index": i, "path": "/home"})
    report = client.flush(timeout_s=float(env["BENCH_TIMEOUT_S"]))
    delivered = report.delivered
else:
    import amplitude
    t_import = time.perf_counter()
    client = amplitude.Amplitude(env["BENCH_KEY"], amplitude.Config(
        server_url=url, flush_queue_size=int(env["BENCH_QUEUE"]),
        flush_interval_millis=int(env["BENCH_INTERVAL_MS"])))
    rss_base = peak_rss_kb()
    t_start = time.perf_counter()
    for i in range(n):
        client.track(amplitude.BaseEvent("Bench Event", user_id=f"user-{i % 100:04d}",
                     event_properties={"plan": "pro", "index": i, "path": "/home"}))
    for future in client.flush():
        if future is not None:
            future.result(timeout=float(env["BENCH_TIMEOUT_S"]))
    delivered = n
    if n > int(env["BENCH_QUEUE"]):
        import urllib.request
        wait = f"{env['BENCH_CONTROL']}/wait?events={n}&timeout_s={env['BENCH_TIMEOUT_S']}"
        with urllib.request.urlopen(wait) as reply:
            delivered = int(__import__("json").loads(reply.read())["events"])
t_end = time.perf_counter()
rss_peak = peak_rss_kb()
import json
print(json.dumps({"delivered": delivered, "total_ms": (t_end - t0) * 1000,
                  "import_ms": (t_import - t0) * 1000, "work_s": t_end - t_start,
                  "trust_ms": None if trust_s[0] is None else trust_s[0] * 1000,
                  "rss_base_kb": rss_base, "rss_peak_kb": rss_peak,
                  "modules_imported": len(sys.modules) - modules_before,
                  "boto3_loaded": "boto3" in sys.modules}))
sys.stdout.flush()
os._exit(0)
"""


def run_child(env: Env, sdk: str, n: int, *, url: str, preimport: str = "",
              layer: LayerInstall | None = None) -> dict[str, Any]:
    """One fresh interpreter; with `layer`, as Lambda starts one from that read-only folder."""
    child_env = dict(os.environ, BENCH_SDK=sdk, BENCH_N=str(n), BENCH_URL=url,
                     BENCH_CA=env.ca_cert if url.startswith("https") else "",
                     BENCH_PRE=preimport, BENCH_KEY=API_KEY, BENCH_CONTROL=env.control_url,
                     BENCH_QUEUE=str(OFFICIAL_QUEUE_SIZE),
                     BENCH_INTERVAL_MS=str(OFFICIAL_SHORT_INTERVAL_MS),
                     BENCH_TIMEOUT_S=str(DELIVERY_TIMEOUT_S), SSL_CERT_FILE=env.ca_cert)
    # Byte-code caches are written (and then used) by both SDKs alike, as in a deployed layer.
    child_env.pop("PYTHONDONTWRITEBYTECODE", None)
    command, cwd = [sys.executable, "-c", CHILD_CODE], None
    if layer is not None:
        child_env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=os.pathsep.join(
            [str(layer.python_dir), *SITE_PACKAGES]))
        command, cwd = [sys.executable, "-S", "-c", CHILD_CODE], str(layer.workdir)
    done = subprocess.run(command, env=child_env, capture_output=True, cwd=cwd,
                          text=True, timeout=CHILD_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child ({sdk}, {n} events) failed with status "
                           f"{done.returncode}:\n{done.stderr}")
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    require(measured["delivered"] == n,
            f"child {sdk}: the SDK reported {measured['delivered']} of {n} events delivered")
    return measured


def warm_up_children(env: Env) -> None:
    """One untimed child per SDK and variant: byte-code caches written, files in the page
    cache, for both SDKs alike (a fresh Lambda sandbox reads a warm host's files too)."""
    for preimport in ("", "boto3"):
        for sdk in SDKS:
            env.control.reset()
            run_child(env, sdk, EVENTS_PER_INVOCATION, url=env.https_url, preimport=preimport)
            env.control.confirm(EVENTS_PER_INVOCATION, f"3 cold warm-up {sdk} {preimport}")


def scenario_cold(env: Env, sizes: Sizes, results: Results) -> None:
    warm_up_children(env)
    for rep in range(sizes.reps):
        for variant, preimport in (("bare", ""), ("boto3", "boto3")):
            for sdk in SDKS:
                env.control.reset()
                measured = run_child(env, sdk, EVENTS_PER_INVOCATION, url=env.https_url,
                                     preimport=preimport)
                env.control.confirm(EVENTS_PER_INVOCATION, f"3 cold {variant} {sdk} rep {rep}")
                results.add("3_cold", sdk, f"{variant}_total_ms", measured["total_ms"])
                results.add("3_cold", sdk, f"{variant}_import_ms", measured["import_ms"])
                results.add("3_cold", sdk, f"{variant}_modules_imported",
                            measured["modules_imported"])
    progress("3 cold invocations: done")


def scenario_bulk(env: Env, sizes: Sizes, results: Results) -> None:
    for n in sizes.bulk:
        for rep in range(sizes.reps):
            for sdk in SDKS:
                env.control.reset()
                measured = run_child(env, sdk, n, url=env.http_url)
                env.control.confirm(n, f"4 bulk {n} {sdk} rep {rep}")
                scenario = f"4_bulk_{n}"
                results.add(scenario, sdk, "wall_s", measured["work_s"])
                results.add(scenario, sdk, "events_per_s", n / measured["work_s"])
                results.add(scenario, sdk, "rss_delta_mb",
                            (measured["rss_peak_kb"] - measured["rss_base_kb"]) / 1024)
                results.add(scenario, sdk, "rss_peak_mb", measured["rss_peak_kb"] / 1024)
            progress(f"4 bulk {n}: rep {rep + 1}/{sizes.reps} done")


# -- scenario 6: cold invocation from a layer ---------------------------------------------------

RUNTIME = f"{sys.version_info[0]}.{sys.version_info[1]}"
ROOT = HERE.parent
# Where the runtime's own packages are (boto3, botocore): after the layer, as on Lambda.
SITE_PACKAGES = [p for p in sys.path if p.endswith("site-packages")]
# botocore.session: what `import boto3` loads, urllib3 with it (`import botocore` alone loads
# neither); the layer's urllib3 shadows the runtime's, as on Lambda.
LAYER_VARIANTS = (("bare", ""), ("botocore", "botocore.session"))


@dataclass(frozen=True)
class LayerInstall:
    python_dir: Path  # on the path, read-only
    workdir: Path  # the child's empty working directory (`-c` puts it first on the path)


def _read_only(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    root.chmod(0o555)


def _writable(root: Path) -> None:
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _compile(python_dir: Path) -> None:
    """As layers/build.py compiles amp-lite's layer."""
    subprocess.run([sys.executable, "-s", "-m", "compileall", "-q", "-f", "--invalidation-mode",
                    "unchecked-hash", "-s", str(python_dir), "-p", "/opt/python",
                    str(python_dir)], check=True, env={"PYTHONHASHSEED": "0"}, cwd=python_dir)


def install_layers(scratch: Path) -> dict[tuple[str, bool], LayerInstall]:
    """(sdk, compiled) -> its read-only install: amp-lite's layer as built, the official SDK
    as pip --target would lay out the installed version, each with and without bytecode."""
    built = scratch / "amp-lite-layer.zip"
    subprocess.run([sys.executable, str(ROOT / "layers" / "build.py"), "--python", RUNTIME,
                    "--output", str(built)], check=True, capture_output=True, timeout=600)
    installs: dict[tuple[str, bool], LayerInstall] = {}
    for compiled in (True, False):
        amp_root = scratch / f"amp-{compiled}"
        with zipfile.ZipFile(built) as archive:
            archive.extractall(amp_root)
        official = scratch / f"official-{compiled}" / "python"
        package = Path(amplitude.__file__).parent
        shutil.copytree(package, official / package.name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        dist = importlib.metadata.distribution("amplitude-analytics")
        info = Path(str(dist.locate_file(""))) / f"amplitude_analytics-{dist.version}.dist-info"
        if info.is_dir():
            shutil.copytree(info, official / info.name)
        if compiled:
            _compile(official)
        else:
            for cache in list((amp_root / "python").rglob("__pycache__")):
                shutil.rmtree(cache)
        for sdk, python_dir in ((AMP, amp_root / "python"), (OFFICIAL, official)):
            workdir = scratch / f"work-{sdk}-{compiled}"
            workdir.mkdir()
            _read_only(python_dir.parent)
            installs[(sdk, compiled)] = LayerInstall(python_dir, workdir)
    return installs


def scenario_layer(env: Env, sizes: Sizes, results: Results) -> None:
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        installs = install_layers(scratch)
        try:
            runs = [(variant, preimport, True) for variant, preimport in LAYER_VARIANTS]
            runs.append(("source", "", False))
            for variant, preimport, compiled in runs:  # untimed: files in the page cache
                for sdk in SDKS:
                    env.control.reset()
                    run_child(env, sdk, EVENTS_PER_INVOCATION, url=env.https_url,
                              preimport=preimport, layer=installs[(sdk, compiled)])
                    env.control.confirm(EVENTS_PER_INVOCATION, f"6 layer warm-up {sdk} {variant}")
            for rep in range(sizes.reps):
                for variant, preimport, compiled in runs:
                    for sdk in SDKS:
                        env.control.reset()
                        layer = installs[(sdk, compiled)]
                        measured = run_child(env, sdk, EVENTS_PER_INVOCATION, url=env.https_url,
                                             preimport=preimport, layer=layer)
                        env.control.confirm(EVENTS_PER_INVOCATION,
                                            f"6 layer {variant} {sdk} rep {rep}")
                        results.add("6_layer", sdk, f"{variant}_total_ms", measured["total_ms"])
                        results.add("6_layer", sdk, f"{variant}_import_ms", measured["import_ms"])
                        if measured["trust_ms"] is not None:
                            results.add("6_layer", sdk, f"{variant}_trust_ms",
                                        measured["trust_ms"])
            for (sdk, compiled), layer in installs.items():  # nothing written, as on /opt
                require(not any(layer.workdir.iterdir()), f"6 layer: {layer.workdir} written")
                require(compiled or not list(layer.python_dir.rglob("__pycache__")),
                        f"6 layer: bytecode written into {sdk}'s read-only folder")
        finally:
            for path in scratch.iterdir():
                if path.is_dir():
                    _writable(path)
    progress("6 cold invocations from a layer: done")


# -- scenario 7: the Lambda extension ---------------------------------------------------------

EXTENSION_LATENCY_MS = 50  # Amplitude a region away
# The hand-off (HandOff.send: connect, one write, the acknowledgement) is timed inside the
# function; each response carries the time of the previous invocation's.
EXTENSION_HANDLER = """
import time
import amp_lite
from amp_lite import _handoff

handoffs = []  # (ms, whether the extension took the events)
_send = _handoff.HandOff.send

def timed_send(self, *args, **kwargs):
    started = time.perf_counter()
    taken = False
    try:
        taken = _send(self, *args, **kwargs)
        return taken
    finally:
        handoffs.append(((time.perf_counter() - started) * 1000, taken))

_handoff.HandOff.send = timed_send

@amp_lite.amplitude_flush
def handler(event, context):
    for i in range(event["events"]):
        amp_lite.track("Bench Event", user_id=f"user-{i % 100:04d}",
                       event_properties={"plan": "pro", "index": i, "path": "/home"})
    return {"previous_handoff": handoffs[-1] if handoffs else None}
"""


def scenario_extension(env: Env, sizes: Sizes, results: Results) -> None:
    sys.path.insert(0, str(ROOT))  # the control-plane fake the tests use
    from tests.support.lambda_control import lambda_environment, source_extension_layer

    invocations = max(10, sizes.warm_invocations // 10)
    env.control.latency(EXTENSION_LATENCY_MS)
    try:
        with tempfile.TemporaryDirectory() as folder:
            scratch = Path(folder)
            code = scratch / "code"
            code.mkdir()
            (code / "app.py").write_text(EXTENSION_HANDLER)
            layer = source_extension_layer(scratch)
            for rep in range(sizes.reps):
                for mode in (AMP, DECORATOR):
                    on = mode == AMP
                    function_env = {
                        "AMPLITUDE_API_KEY": API_KEY, "AMPLITUDE_SERVER_URL": env.http_url,
                        "AMP_LITE_SPILL_DIR": str(scratch / f"spill-{mode}-{rep}"),
                        "AMP_LITE_EXTENSION": "on" if on else "",
                        "AMP_LITE_EXTENSION_SOCKET": str(scratch / "sock" / "handoff.sock"),
                        "AMP_LITE_EXTENSION_PYTHON": sys.executable,
                        "AMP_LITE_LOG_LEVEL": "INFO"}
                    logs = scratch / f"logs-{mode}-{rep}"
                    logs.mkdir()
                    with lambda_environment("app.handler", env=function_env,
                                            python_path=[code], log_dir=logs,
                                            extensions_dir=layer / "extensions" if on else None,
                                            timeout_ms=10_000) as lam:
                        env.control.reset()
                        cold = lam.invoke({"events": EVENTS_PER_INVOCATION})  # untimed
                        require(cold.failure is None, f"7 cold invocation: {cold.failure}")
                        caller, post, billed, handoffs = [], [], [], []
                        for n in range(invocations + 1):  # the last one reports the one before
                            result = lam.invoke({"events": EVENTS_PER_INVOCATION})
                            require(result.failure is None and result.kind == "response",
                                    f"7 {mode}: {result.failure or result.body}")
                            if n and on:
                                handoff_ms, taken = result.body["previous_handoff"]
                                require(taken, f"7 rep {rep}: a hand-off fell back")
                                handoffs.append(handoff_ms)
                            if n < invocations:
                                caller.append(result.caller_ms)
                                post.append(result.post_response_ms)
                                billed.append(result.duration_ms)
                        env.control.confirm(EVENTS_PER_INVOCATION * (invocations + 2),
                                            f"7 {mode} rep {rep}")
                        results.add("7_extension", mode, "caller_ms", statistics.median(caller))
                        results.add("7_extension", mode, "billed_ms", statistics.median(billed))
                        results.add_raw("7_extension", mode, "caller_ms", caller)
                        if on:
                            extension = lam.extension("amp-lite")
                            require(extension.registered_s is not None, "7: never registered")
                            results.add("7_extension", AMP, "registration_ms",
                                        (extension.registered_s - extension.started_s) * 1000)
                            results.add("7_extension", AMP, "post_response_ms",
                                        statistics.median(post))
                            results.add("7_extension", AMP, "handoff_ms",
                                        statistics.median(handoffs))
                            results.add_raw("7_extension", AMP, "handoff_ms", handoffs)
    finally:
        env.control.latency(0)
    progress("7 the Lambda extension: done")


# -- scenario 5: replay ------------------------------------------------------------------------


def sqs_records(events: list[amp_lite.BufferedEvent]) -> list[dict[str, Any]]:
    """Overflow messages as an SQS-triggered Lambda receives them."""
    messages = pack_messages(events, reason="deadline", attempts=3,
                             overflowed_at_ms=int(time.time() * 1000))
    records = []
    for index, message in enumerate(messages):
        attributes = message_attributes("deadline")
        records.append({
            "messageId": f"bench-message-{index}", "receiptHandle": f"bench-receipt-{index}",
            "body": message.body,
            "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1795717756052",
                           "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                           "ApproximateFirstReceiveTimestamp": "1795717756053"},
            "messageAttributes": {
                name: {"stringValue": attr["StringValue"], "binaryValue": None,
                       "stringListValues": [], "binaryListValues": [],
                       "dataType": attr["DataType"]} for name, attr in attributes.items()},
            "md5OfBody": hashlib.md5(message.body.encode()).hexdigest(),
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:amp-lite-overflow",
            "awsRegion": "us-east-1",
        })
    return records


def tracked_events(n: int) -> list[amp_lite.BufferedEvent]:
    source = amp_lite.Amplitude(API_KEY, server_url="http://127.0.0.1:9/never", overflow=())
    for i in range(n):
        source.track("Replayed Event", user_id=user(i),
                     event_properties={"plan": "pro", "index": i, "path": "/home"})
    return source._scopes.current().take_all()


def scenario_replay(env: Env, sizes: Sizes, results: Results) -> None:
    n = sizes.replay_events
    events = tracked_events(n)
    batch = {"Records": sqs_records(events)}
    dicts = [json.loads(e.raw) for e in events]
    client = amp_lite.Amplitude(API_KEY, server_url=env.http_url, overflow=())
    handler = make_handler(client)
    # Untimed: the first call imports Powertools and opens the connection (a warm consumer).
    env.control.reset()
    warm = handler({"Records": sqs_records(tracked_events(10))}, None)
    require(not warm.get("batchItemFailures"), f"replay warm-up: {warm}")
    env.control.confirm(10, "5 replay warm-up")
    for rep in range(sizes.reps):
        env.control.reset()
        started = time.perf_counter()
        response = handler(batch, None)
        replay_s = time.perf_counter() - started
        require(not response.get("batchItemFailures"), f"replay rep {rep}: {response}")
        env.control.confirm(n, f"5 replay rep {rep}")
        started = time.perf_counter()
        json.dumps(dicts)
        floor_s = time.perf_counter() - started
        results.add("5_replay", AMP, "replay_events_per_s", n / replay_s)
        results.add("5_replay", AMP, "floor_events_per_s", n / floor_s)
        results.add("5_replay", AMP, "ratio_to_floor", replay_s / floor_s)
        results.add("5_replay", AMP, "records", len(batch["Records"]))
    client.close()
    progress("5 replay: done")


# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    scenario: str
    label: str
    metric: str
    unit: str
    target: str = ""  # "ratio<=X", "amp==X", or "" (reported, no target)
    versus: str = OFFICIAL  # what the second column is (DECORATOR: amp-lite in the function)


def rows(sizes: Sizes) -> list[Row]:
    table = [
        Row("1_track", "1 track() per event", "per_event_us", "us", "ratio<=0.05"),
        Row("2_warm", "2 warm invocation, median", "median_ms", "ms", "ratio<=0.5"),
        Row("2_warm", "2 warm invocation, p99", "p99_ms", "ms"),
        Row("2_warm", "2 TCP+TLS connections/run", "connections", "", "amp==1"),
        Row("3_cold", "3 cold, bare", "bare_total_ms", "ms"),
        Row("3_cold", "3 cold, boto3 imported", "boto3_total_ms", "ms", "ratio<=1.0"),
        Row("3_cold", "3 import only, bare", "bare_import_ms", "ms"),
    ]
    for n in sizes.bulk:
        table += [
            Row(f"4_bulk_{n}", f"4 bulk {n:,} wall", "wall_s", "s", "ratio<=0.2"),
            Row(f"4_bulk_{n}", f"4 bulk {n:,} rate", "events_per_s", "ev/s"),
            Row(f"4_bulk_{n}", f"4 bulk {n:,} peak RSS - base", "rss_delta_mb", "MB",
                "ratio<=0.5"),
            Row(f"4_bulk_{n}", f"4 bulk {n:,} peak RSS", "rss_peak_mb", "MB"),
        ]
    table += [
        Row("6_layer", "6 layer cold, bare", "bare_total_ms", "ms", "ratio<=0.7"),
        Row("6_layer", "6 layer cold, botocore loaded", "botocore_total_ms", "ms", "ratio<=0.7"),
        Row("6_layer", "6 layer import, bare", "bare_import_ms", "ms"),
        Row("6_layer", "6 layer import, botocore loaded", "botocore_import_ms", "ms", "amp<=10"),
        Row("6_layer", "6 layer CA bundle load, botocore", "botocore_trust_ms", "ms"),
        Row("6_layer", "6 layer import, no .pyc", "source_import_ms", "ms"),
        Row("6_layer", "6 layer cold, no .pyc", "source_total_ms", "ms"),
        Row("5_replay", "5 replay rate", "replay_events_per_s", "ev/s"),
        Row("5_replay", "5 json.dumps floor rate", "floor_events_per_s", "ev/s"),
        Row("5_replay", "5 replay time / floor", "ratio_to_floor", "x"),
        Row("7_extension", "7 caller latency, ext (vs in-function)", "caller_ms", "ms",
            "ratio<=0.05", versus=DECORATOR),
        Row("7_extension", "7 invocation duration (billed)", "billed_ms", "ms",
            versus=DECORATOR),
        Row("7_extension", "7 hand-off, 10 events", "handoff_ms", "ms", "amp<=0.5"),
        Row("7_extension", "7 post-response time", "post_response_ms", "ms"),
        Row("7_extension", "7 extension start to registration", "registration_ms", "ms",
            "amp<=30"),
    ]
    return table


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{digits}f}"


def spread(values: list[float]) -> str:
    return f"{fmt(min(values))}..{fmt(max(values))}" if values else "n/a"


def summarize(results: Results, sizes: Sizes) -> list[dict[str, Any]]:
    summary = []
    for row in rows(sizes):
        ours = results.values(row.scenario, AMP, row.metric)
        theirs = results.values(row.scenario, row.versus, row.metric)
        if not ours and not theirs:  # a scenario left out by --scenario
            continue
        amp_median = statistics.median(ours) if ours else None
        official_median = statistics.median(theirs) if theirs else None
        ratio = (amp_median / official_median
                 if amp_median is not None and official_median else None)
        met: bool | None = None
        if row.target.startswith("ratio<=") and ratio is not None:
            met = ratio <= float(row.target.removeprefix("ratio<="))
        elif row.target.startswith("amp<=") and amp_median is not None:
            met = amp_median <= float(row.target.removeprefix("amp<="))
        elif row.target.startswith("amp=="):
            met = bool(ours) and all(v == float(row.target.removeprefix("amp==")) for v in ours)
        summary.append({"scenario": row.scenario, "label": row.label, "metric": row.metric,
                        "unit": row.unit, "amp_lite_median": amp_median,
                        "official_median": official_median, "amp_lite_spread": spread(ours),
                        "official_spread": spread(theirs), "ratio": ratio,
                        "target": row.target or "-", "met": met})
    return summary


def render(summary: list[dict[str, Any]]) -> str:
    header = ["scenario / metric", "unit", "amp-lite", "official", "spread amp-lite",
              "spread official", "ratio", "target", "met?"]
    lines = [[s["label"], s["unit"], fmt(s["amp_lite_median"]), fmt(s["official_median"]),
              s["amp_lite_spread"], s["official_spread"],
              fmt(s["ratio"]) if s["ratio"] is not None else "-", s["target"],
              {True: "yes", False: "NO", None: "-"}[s["met"]]] for s in summary]
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), separator, *(line(r) for r in lines)])


# -- machine description -----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    memory_kb = None
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
        for text in Path("/proc/meminfo").read_text().splitlines():
            if text.startswith("MemTotal:"):
                memory_kb = int(text.split()[1])
    except OSError:
        pass
    return {
        "cpu_model": cpu, "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_mb": memory_kb // 1024 if memory_kb else None,
        "platform": platform.platform(), "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "openssl": ssl.OPENSSL_VERSION, "amp_lite": amp_lite.__version__,
        "amplitude_analytics": importlib.metadata.version("amplitude-analytics"),
        "urllib3": importlib.metadata.version("urllib3"),
        "boto3": importlib.metadata.version("boto3"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def describe(info: dict[str, Any]) -> str:
    return (f"{info['date']}: {info['cpu_model']}, {info['cores_usable']} usable cores, "
            f"{info['memory_mb']} MB, Python {info['python']}, {info['openssl']}; "
            f"amp-lite {info['amp_lite']}, amplitude-analytics {info['amplitude_analytics']}, "
            f"urllib3 {info['urllib3']}, boto3 {info['boto3']}")


# -- main --------------------------------------------------------------------------------------

SCENARIOS: list[tuple[str, Callable[[Env, Sizes, Results], None]]] = [
    ("1 track() cost", scenario_track), ("2 warm invocations", scenario_warm),
    ("3 cold invocations", scenario_cold), ("4 bulk", scenario_bulk),
    ("5 replay", scenario_replay), ("6 cold invocations from a layer", scenario_layer),
    ("7 the Lambda extension", scenario_extension),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per SDK")
    parser.add_argument("--json", type=Path, default=HERE / "results.json",
                        help="where to write the raw numbers (default: benchmarks/results.json)")
    parser.add_argument("--scenario", type=int, action="append", choices=range(1, 8),
                        metavar="N", help="run only scenario N (1-7; repeatable; default: all)")
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    base = QUICK if args.quick else FULL
    sizes = Sizes(**{**asdict(base), "reps": args.reps or base.reps})
    info = machine()
    results = Results()
    proc, env = start_collector()
    started = time.monotonic()
    try:
        for number, (name, scenario) in enumerate(SCENARIOS, start=1):
            if args.scenario and number not in args.scenario:
                continue
            progress(f"{name} ({sizes.reps} repetitions per SDK)...")
            scenario(env, sizes, results)
    finally:
        checks = env.control.checks
        stop_collector(proc, env)
    summary = summarize(results, sizes)
    return {
        "machine": info, "quick": args.quick, "sizes": asdict(sizes),
        "duration_s": time.monotonic() - started, "command": " ".join(sys.argv),
        "config": {
            "official": {"flush_queue_size": OFFICIAL_QUEUE_SIZE,
                         "flush_interval_millis": {
                             "1_track": OFFICIAL_IDLE_INTERVAL_MS,
                             "2_warm": OFFICIAL_DEFAULT_INTERVAL_MS,
                             "children": OFFICIAL_SHORT_INTERVAL_MS},
                         "1_track_flush_queue_size": sizes.track_events + WARMUP_EVENTS + 1},
            "amp_lite": {"overflow": None, "gzip": "default (bodies >= 2 KiB)"},
            "transport": {"1_track": "http", "2_warm": "https", "3_cold": "https",
                          "4_bulk": "http", "5_replay": "http", "6_layer": "https"},
            "6_layer": {"runtime": f"python{RUNTIME}", "path_after_layer": SITE_PACKAGES,
                        "flags": "-S, PYTHONDONTWRITEBYTECODE=1, read-only folders",
                        "bytecode": "compileall --invalidation-mode unchecked-hash"},
        },
        "samples": results.samples, "raw": results.raw, "summary": summary,
        "delivery": {"confirmed": True, "checks": len(checks),
                     "events": sum(c["received"] for c in checks), "runs": checks},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        outcome = benchmark(args)
    except DeliveryError as exc:
        print(f"\nDELIVERY CHECK FAILED: {exc}", file=sys.stderr, flush=True)
        return 2
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(outcome, indent=1) + "\n")
    print(f"\namp-lite vs amplitude-analytics: {describe(outcome['machine'])}")
    print(f"{outcome['sizes']['reps']} repetitions per SDK, alternating; medians; spread is "
          "min..max over repetitions; ratio is amp-lite / official\n")
    print(render(outcome["summary"]))
    delivery = outcome["delivery"]
    print(f"\ndelivery confirmed at the collector: {delivery['checks']} runs, "
          f"{delivery['events']:,} events, every one received exactly")
    print(f"raw numbers: {args.json} ({outcome['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no official consumer thread may keep the process alive
