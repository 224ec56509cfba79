"""The Lambda layers as shipped: one per runtime, reproducible, small, compiled, complete, and
working on their own.

All layers are built once for the module, each with its own runtime's interpreter (a runtime
with no interpreter on this machine is skipped, by name). Each one must import from a
read-only copy, as /opt is on Lambda, using its own bytecode: nothing compiled at import.

The canary unzips the built layer into an empty directory and runs real handlers through the
real awslambdaric runtime client with only that directory, the function's code, the runtime
client and the standard library on the path (python -S): no site-packages, no source tree.
It runs on this interpreter's runtime (the runtime client installed here is built for it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY
from tests.support.lambda_runtime import REPO_ROOT, lambda_runtime

BUILD = REPO_ROOT / "layers" / "build.py"
# Sources and one runtime's bytecode: 710-726 KB for 3.11-3.13, the extension layer 27 KB
# more. The gate catches what must not be there (botocore alone is megabytes, amp_lite.testing
# 20 KB), not bytecode: that saves every cold start its compile (README, Performance).
SIZE_BUDGET_BYTES = 800 * 1024
EXAMPLES = REPO_ROOT / "examples"
THIS_RUNTIME = f"{sys.version_info[0]}.{sys.version_info[1]}"


def _load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("amp_lite_layer_build", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


def _interpreter(runtime: str) -> Path | None:
    try:
        found: Path = build.find_interpreter(runtime)
    except SystemExit:
        return None
    return found


@pytest.fixture(scope="module")
def interpreters() -> dict[str, Path]:
    found = {runtime: _interpreter(runtime) for runtime in build.RUNTIMES}
    assert THIS_RUNTIME in build.RUNTIMES and found[THIS_RUNTIME] is not None
    return {runtime: path for runtime, path in found.items() if path is not None}


def _build_all(runtimes: list[str], folder: Path) -> dict[str, str]:
    flags = [arg for runtime in runtimes for arg in ("--python", runtime)]
    subprocess.run([sys.executable, str(BUILD), *flags, "--output-dir", str(folder)],
                   check=True, capture_output=True, text=True, timeout=600)
    return {runtime: hashlib.sha256((folder / build.layer_name(runtime)).read_bytes())
            .hexdigest() for runtime in runtimes}


@pytest.fixture(scope="module")
def layer_zips(tmp_path_factory: pytest.TempPathFactory,
               interpreters: dict[str, Path]) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("layers")
    _build_all(sorted(interpreters), folder)
    return {runtime: folder / build.layer_name(runtime) for runtime in interpreters}


@pytest.fixture(params=build.RUNTIMES, ids=[f"python{r}" for r in build.RUNTIMES])
def runtime(request: pytest.FixtureRequest, interpreters: dict[str, Path]) -> str:
    value: str = request.param
    if value not in interpreters:
        pytest.skip(f"no Python {value} interpreter on this machine: its layer is not built")
    return value


@pytest.fixture(scope="module")
def layer_zip(layer_zips: dict[str, Path]) -> Path:
    """The layer of the runtime this interpreter is: the one the canary can run."""
    return layer_zips[THIS_RUNTIME]


@pytest.fixture(scope="module")
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What Lambda's /var/runtime holds for us: the runtime client and its dependencies."""
    target = tmp_path_factory.mktemp("runtime")
    for module in ("awslambdaric", "runtime_client", "simplejson", "snapshot_restore_py"):
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, target / origin.parent.name)
        else:
            shutil.copy2(origin, target / origin.name)
    return target


def _unzip_read_only(layer: Path, target: Path) -> Path:
    """The layer as Lambda mounts it: unzipped under /opt, nothing writable."""
    target.mkdir()
    with zipfile.ZipFile(layer) as archive:
        archive.extractall(target)
    for path in sorted(target.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    target.chmod(0o555)
    return target / "python"


def _make_writable(root: Path) -> None:  # so that pytest can remove its tmp_path
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture
def layer_dir(layer_zip: Path, tmp_path: Path) -> Iterator[Path]:
    python_dir = _unzip_read_only(layer_zip, tmp_path / "opt")
    yield python_dir
    _make_writable(tmp_path / "opt")


def test_building_twice_gives_the_same_bytes(layer_zips: dict[str, Path],
                                             tmp_path: Path) -> None:
    # WHEN every layer is built a second time, elsewhere
    again = _build_all(sorted(layer_zips), tmp_path)
    # THEN each archive is byte-identical to the first (bytecode included)
    assert again == {runtime: hashlib.sha256(path.read_bytes()).hexdigest()
                     for runtime, path in layer_zips.items()}


def test_bytecode_is_reproducible_on_every_buildable_runtime(tmp_path: Path) -> None:
    # GIVEN a module with a frozenset constant (3.10 marshals one in string-hash order)
    digests: dict[str, set[str]] = {}
    for runtime in (*build.DEPRECATED_RUNTIMES, *build.RUNTIMES):
        interpreter = _interpreter(runtime)
        if interpreter is None:
            continue
        for attempt in range(3):
            # WHEN the build compiles it, several times
            python_dir = tmp_path / f"{runtime}-{attempt}" / "python"
            python_dir.mkdir(parents=True)
            (python_dir / "probe.py").write_text(
                "def f(x):\n    return x in {'alpha', 'beta', 'gamma', 'delta', 'epsilon'}\n")
            build.compile_tree(python_dir, interpreter)
            compiled = next((python_dir / "__pycache__").glob("probe.*.pyc"))
            digests.setdefault(runtime, set()).add(
                hashlib.sha256(compiled.read_bytes()).hexdigest())
    # THEN it gives the same bytes every time (a fixed hash seed), on every runtime here
    assert THIS_RUNTIME in digests
    assert all(len(found) == 1 for found in digests.values()), digests


def test_layer_fits_the_size_budget(layer_zips: dict[str, Path], runtime: str) -> None:
    assert layer_zips[runtime].stat().st_size < SIZE_BUDGET_BYTES


def test_layer_layout_and_contents(layer_zips: dict[str, Path], runtime: str,
                                   interpreters: dict[str, Path]) -> None:
    layer_zip = layer_zips[runtime]
    with zipfile.ZipFile(layer_zip) as archive:
        infos = archive.infolist()
    names = [i.filename for i in infos]
    # python/ at the root, amp_lite and urllib3 in it
    assert all(n.startswith("python/") for n in names)
    assert "python/amp_lite/__init__.py" in names
    assert "python/amp_lite/aws_lambda.py" in names
    assert "python/amp_lite/replay.py" in names
    assert "python/urllib3/__init__.py" in names
    # never boto3/botocore, nothing that records the build machine
    assert not any(n.startswith(("python/boto3", "python/botocore", "python/s3transfer"))
                   for n in names)
    assert not any(n.endswith(("direct_url.json", "INSTALLER", "REQUESTED")) for n in names)
    # bytecode for every module, for this runtime only
    tag = f"cpython-{runtime.replace('.', '')}"
    sources = [n for n in names if n.endswith(".py")]
    compiled = [n for n in names if n.endswith(".pyc")]
    for source in sources:
        folder, _, file = source.rpartition("/")
        assert f"{folder}/__pycache__/{file[:-3]}.{tag}.pyc" in names, source
    assert len(compiled) == len(sources)
    assert all(n.endswith(f".{tag}.pyc") for n in compiled)
    # only what runs in a function: no test helpers (FakeAmplitude, TLS), nor in the RECORD;
    # the extension's own process only in the extension layer (the hand-off is in both)
    assert not any(n.startswith(("python/amp_lite/testing/", "python/amp_lite/_demo",
                                 "python/amp_lite/__pycache__/_demo")) for n in names)
    assert "python/amp_lite/_handoff.py" in names
    assert not any(n.startswith(("python/amp_lite/_extension", "extensions/",
                                 "python/amp_lite/__pycache__/_extension")) for n in names)
    with zipfile.ZipFile(layer_zip) as archive:
        record = next(archive.read(n).decode() for n in names
                      if n.startswith("python/amp_lite-") and n.endswith("/RECORD"))
        header = archive.read(f"python/amp_lite/__pycache__/__init__.{tag}.pyc")[:16]
    assert "amp_lite/testing/" not in record
    assert f"amp_lite/__pycache__/_client.{tag}.pyc,sha256=" in record
    # hash-based and unchecked (PEP 552): no source mtime inside, never re-validated
    assert int.from_bytes(header[4:8], "little") == 0b01
    # pure Python: one zip for x86_64 and arm64
    assert not any(n.endswith((".so", ".pyd")) for n in names)
    # reproducible metadata: sorted, fixed times and permissions
    assert names == sorted(names)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}


# What a function imports at its first flush: the client, the Lambda adapter, the transport.
PROBE = """
import importlib, json, sys
names = ["amp_lite", "amp_lite.aws_lambda", "amp_lite._http", "amp_lite.replay", "urllib3"]
for name in names:
    importlib.import_module(name)
layer = sys.argv[1]
ours = {n: m for n, m in sys.modules.items()
        if (getattr(m, "__file__", None) or "").startswith(layer)}
print(json.dumps({n: [m.__file__, m.__cached__] for n, m in sorted(ours.items())}))
"""


def test_layer_imports_its_own_bytecode_from_a_read_only_copy(
        layer_zips: dict[str, Path], runtime: str, interpreters: dict[str, Path],
        tmp_path: Path) -> None:
    # GIVEN the layer unzipped read-only, and that runtime's interpreter with no site-packages
    python_dir = _unzip_read_only(layer_zips[runtime], tmp_path / "opt")
    before = sorted(p.relative_to(python_dir) for p in python_dir.rglob("*"))
    try:
        # WHEN a fresh process imports amp_lite and its transport, writing no bytecode (from
        # elsewhere: `-c` puts the working directory, this checkout, first on the path)
        done = subprocess.run(
            [str(interpreters[runtime]), "-S", "-v", "-c", PROBE, str(python_dir)],
            env={"PYTHONPATH": str(python_dir), "PYTHONDONTWRITEBYTECODE": "1",
                 "PATH": os.environ.get("PATH", "")},
            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
        after = sorted(p.relative_to(python_dir) for p in python_dir.rglob("*"))
    finally:
        _make_writable(tmp_path / "opt")
    # THEN every module came from the layer, each from its .pyc for this runtime
    modules = json.loads(done.stdout)
    assert {"amp_lite", "amp_lite._http", "amp_lite.aws_lambda", "urllib3"} <= set(modules)
    tag = f"cpython-{runtime.replace('.', '')}"
    for name, (source, cached) in modules.items():
        assert source.startswith(str(python_dir)), name
        assert cached.endswith(f".{tag}.pyc") and Path(cached).is_file(), name
        assert f"# code object from '{cached}'" in done.stderr, name
    # and none was compiled from source (-v names the source then), nothing was written
    loaded = [line for line in done.stderr.splitlines()
              if line.startswith("# code object from") and str(python_dir) in line]
    assert loaded and all(line.endswith(".pyc'") for line in loaded)
    assert after == before


@pytest.mark.parametrize("layer_runtime", ["python3.11", "python3.13"])
def test_layer_pins_a_compatible_urllib3(layer_zips: dict[str, Path], layer_runtime: str) -> None:
    runtime = layer_runtime.removeprefix("python")
    if runtime not in layer_zips:
        pytest.skip(f"no {layer_runtime} interpreter here")
    with zipfile.ZipFile(layer_zips[runtime]) as archive:
        versions = [n.split("/")[1] for n in archive.namelist()
                    if n.startswith("python/urllib3-") and n.endswith(".dist-info/METADATA")]
    assert len(versions) == 1
    version = versions[0].removeprefix("urllib3-").removesuffix(".dist-info")
    major = int(version.split(".")[0])
    assert version != "2.2.0" and 1 <= major < 3
    pinned = (REPO_ROOT / "layers" / "requirements.txt").read_text()
    assert f"urllib3=={version}" in pinned


def test_makefile_target_used_by_sam_build_from_a_scratch_copy(tmp_path: Path) -> None:
    # GIVEN the makefile SAM runs for BuildMethod: makefile, from a scratch copy of its folder
    # (plain `sam build` runs make there, with the original Makefile's path)
    scratch = tmp_path / "scratch"
    shutil.copytree(REPO_ROOT / "layers" / "amp_lite", scratch)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    # WHEN its target runs with ARTIFACTS_DIR set, as SAM does
    subprocess.run(["make", "--makefile", str(REPO_ROOT / "layers" / "amp_lite" / "Makefile"),
                    "build-AmpLiteLayer", f"ARTIFACTS_DIR={artifacts}",
                    f"PYTHON={sys.executable}"],
                   cwd=scratch, check=True, capture_output=True, timeout=300,
                   env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                        "HOME": os.environ.get("HOME", "/")})
    # THEN the layer content is there, python/ at its root, compiled for the stack's runtime
    assert (artifacts / "python" / "amp_lite" / "__init__.py").is_file()
    assert (artifacts / "python" / "urllib3" / "__init__.py").is_file()
    assert (artifacts / "python" / "amp_lite" / "__pycache__" / "__init__.cpython-312.pyc"
            ).is_file()
    assert not list(artifacts.rglob("*.cpython-311.pyc"))


@pytest.mark.parametrize(("handler", "extra_env"), [
    ("lambda_handler.handler", {}),
    ("amp_lite.aws_lambda.handler", {"AMP_LITE_HANDLER": "zero_code_handler.handler"}),
])
def test_canary_runs_handlers_from_the_layer_alone(
        layer_dir: Path, runtime_dir: Path, fake: FakeAmplitude, tmp_path: Path,
        handler: str, extra_env: dict[str, str]) -> None:
    # GIVEN only the unzipped layer, the function code and the runtime client on the path
    env = {"AMPLITUDE_API_KEY": API_KEY, "AMPLITUDE_SERVER_URL": fake.url,
           "AMP_LITE_SPILL_DIR": str(tmp_path / "spill"), "PYTHONDONTWRITEBYTECODE": "1",
           **extra_env}
    code = tmp_path / "task"
    shutil.copytree(EXAMPLES, code)
    with lambda_runtime(handler, env=env, python_path=[code, layer_dir, runtime_dir],
                        log_dir=tmp_path, isolated_path=True) as runtime:
        # WHEN the function is invoked
        result = runtime.api.invoke({"user_id": "user-canary", "items": ["a", "b"]})
        # THEN it answered, and its events arrived at Amplitude before the response
        assert result.kind == "response", runtime.output()
        assert result.body == {"statusCode": 200, "tracked": 2}
        assert len(fake.events) == 2
        assert {e["library"] for e in fake.events} == {"amp-lite/0.1.0"}


def test_canary_really_is_isolated(layer_dir: Path, runtime_dir: Path, tmp_path: Path) -> None:
    # The canary proves something only if amp_lite and urllib3 come from the layer.
    probe = tmp_path / "probe.py"
    probe.write_text("import amp_lite, urllib3, sys\n"
                     "print(amp_lite.__file__); print(urllib3.__file__)\n"
                     "import importlib.util as u; print(u.find_spec('boto3'))\n")
    done = subprocess.run([sys.executable, "-S", str(probe)], capture_output=True, text=True,
                          env={"PYTHONPATH": f"{layer_dir}:{runtime_dir}"}, check=True)
    amp_file, urllib3_file, boto3_spec = done.stdout.splitlines()
    assert amp_file.startswith(str(layer_dir))
    assert urllib3_file.startswith(str(layer_dir))
    assert boto3_spec == "None"
