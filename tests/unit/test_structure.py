"""The package's shape: a pinned public surface, visibly internal modules, no import cycles,
options declared once.

Changing a pinned list below is a decision about the public API, to be made on purpose (the
idea comes from httpx's tests/test_exported_members.py).
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import amp_lite
from amp_lite._config import ClientOptions, option_names

PACKAGE_DIR = Path(amp_lite.__file__).parent
README = PACKAGE_DIR.parent / "README.md"

PUBLIC_MODULES = {
    "amp_lite": {
        "AmpLiteError", "Amplitude", "AsyncTransport", "BaseRetryHandler", "BufferedEvent",
        "ClientConfig",
        "ClientOptions", "ConfigError", "Deadline", "DeliveryReport", "Event", "Identify",
        "IngestionMetadata", "InvalidEventError", "Invocation", "Middleware",
        "OfflineRetryHandler", "OverflowSink", "OverflowWriteError", "Plan", "Reply", "Retry",
        "RetryHandler", "Revenue", "SendOutcome", "Sender", "Transport", "__version__",
        "amplitude_flush", "flush", "get_client", "group_identify", "identify", "revenue",
        "set_client", "set_group", "track",
    },
    "amp_lite.asgi": {"AmplitudeMiddleware"},
    "amp_lite.wsgi": {"AmplitudeMiddleware"},
    "amp_lite.aws_lambda": {"ENV_HANDLER", "call_time_left", "context_time_left",
                            "resolve_handler"},
    "amp_lite.gcp": {"DEFAULT_TIMEOUT_S", "ENV_TIMEOUT", "call_budget", "cloud_event",
                     "function_timeout_s", "http", "is_cloud_functions_call"},
    "amp_lite.replay": {"ReplayRecord", "ReplayRecordError", "ReplayResult", "handler",
                        "make_handler", "replay_records"},
    "amp_lite.overflow": {"LocalSpill", "OverflowSink", "RecoverableSink", "SQSOverflow",
                          "SpillClaim"},
    "amp_lite.testing": {"FakeAmplitude", "Fault", "RequestRecord"},
    "amp_lite.testing.tls": {"TlsFiles", "make_tls_files"},
}
# Options whose resolution combines several arguments (see ClientConfig.resolve).
COMPOSITE_OPTIONS = {"server_zone", "server_url", "use_batch", "gzip"}


def all_modules() -> list[str]:
    names = ["amp_lite"]
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="amp_lite."):
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("module_name", sorted(PUBLIC_MODULES))
def test_public_modules_export_exactly_the_pinned_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    # every exported name exists, and the list is the pinned one
    exported = set(module.__all__)
    assert exported == PUBLIC_MODULES[module_name]
    for name in exported:
        assert getattr(module, name) is not None


def test_every_other_module_is_visibly_internal() -> None:
    # GIVEN every module of the package, WHEN its name is read
    # THEN it is public (pinned above) or its own name starts with an underscore
    stray = [name for name in all_modules() if name not in PUBLIC_MODULES
             and not name.rsplit(".", 1)[-1].startswith("_")]
    assert stray == []


def test_public_classes_say_they_come_from_amp_lite() -> None:
    # the classes a user types against are reachable from the top level, whatever module
    # they live in
    for name in ("Amplitude", "Transport", "Reply", "OverflowSink", "Retry", "Sender"):
        assert getattr(amp_lite, name).__name__ == name


def _runtime_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node, except those under `if TYPE_CHECKING:` (annotations only, never run)."""
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
               for n in ast.walk(node)}
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def _imports(path: Path, module_name: str) -> set[str]:
    """The package modules `path` imports when it runs (lazy imports in functions too)."""
    package = module_name if path.name == "__init__.py" else module_name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("amp_lite"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            if not base.startswith("amp_lite"):
                continue
            for alias in node.names:  # `from . import _report` imports a module
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _is_module(candidate) else base)
    return found - {module_name}


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return ((PACKAGE_DIR / relative).with_suffix(".py").exists()
            or (PACKAGE_DIR / relative / "__init__.py").exists())


def _path_of(name: str) -> Path:
    relative = Path(*name.split(".")[1:])
    module = (PACKAGE_DIR / relative).with_suffix(".py")
    return module if module.exists() else PACKAGE_DIR / relative / "__init__.py"


def test_no_import_cycles() -> None:
    # GIVEN the graph of imports between the package's modules, lazy ones included
    graph = {name: _imports(_path_of(name), name) for name in all_modules()}
    # WHEN it is walked depth first / THEN no module is reached again from itself
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph.get(name, ())):
            if state.get(target) == "open":
                cycles.append([*trail[trail.index(target):], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert cycles == []


# What `import amp_lite` may decorate with @dataclass: each costs about 0.5 ms of every cold
# start (its methods are compiled from source text at import, beyond the layer's bytecode), so
# value types use amp_lite._value instead. These stay: users subclass the strategies with
# @dataclass, and ClientConfig's options are dataclass fields.
IMPORT_TIME_DATACLASSES = {
    "amp_lite._config.ClientConfig", "amp_lite._retry.BaseRetryHandler",
    "amp_lite._retry.RetryHandler", "amp_lite._retry.OfflineRetryHandler",
}


def test_import_builds_only_the_pinned_dataclasses() -> None:
    # GIVEN a fresh interpreter that records every class @dataclass processes
    probe = textwrap.dedent("""
        import dataclasses, json, sys
        seen, process = [], dataclasses._process_class
        def recording(cls, *args, **kwargs):
            seen.append(f"{cls.__module__}.{cls.__qualname__}")
            return process(cls, *args, **kwargs)
        dataclasses._process_class = recording
        import amp_lite
        print(json.dumps(seen))
    """)
    # WHEN it imports amp_lite
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)
    # THEN only the pinned dataclasses were built
    built = {name for name in json.loads(done.stdout) if name.startswith("amp_lite")}
    assert built == IMPORT_TIME_DATACLASSES


def test_the_generic_decorator_imports_no_platform_at_the_top() -> None:
    for name in ("amp_lite._wrap", "amp_lite._decorator"):
        tree = ast.parse(_path_of(name).read_text())
        top = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
        assert not top & {"aws_lambda", "gcp"}, name


def test_each_option_is_declared_once_and_documented() -> None:
    # GIVEN the typed constructor keywords and the options ClientConfig declares
    keywords = set(ClientOptions.__annotations__)
    # THEN they are the same options (plain ones, plus those resolved together)
    assert keywords == option_names() | COMPOSITE_OPTIONS
    # AND the README's configuration table has a row for each
    first_cells = re.findall(r"^\| ([^|]+) \|", README.read_text(), flags=re.MULTILINE)
    rows = {name for cell in first_cells for name in re.findall(r"`([a-z_]+)`", cell)}
    assert keywords - rows == set()


def test_value_types_copy_pickle_match_and_stay_frozen() -> None:
    # what the dataclasses they replaced did (amp_lite._value)
    import copy
    import dataclasses
    import pickle

    from amp_lite import Deadline, Plan, Reply, SendOutcome

    reply = Reply(429, {"code": 429}, retry_after_s=2.0)
    for value in (reply, Deadline(5.0), Plan(branch="main", version_id="v1")):
        assert pickle.loads(pickle.dumps(value)) == value
        assert copy.copy(value) == value and copy.deepcopy(value) == value
    match reply:
        case Reply(429, body):
            assert body == {"code": 429}
        case _:
            raise AssertionError("Reply no longer matches by position")
    with pytest.raises(dataclasses.FrozenInstanceError):
        reply.error = "timeout"  # type: ignore[misc]
    assert SendOutcome([], {}, {}, 1).attempts == 1  # positional, as before
