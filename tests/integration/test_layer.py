"""The Lambda layer as shipped: reproducible, small, complete, and working on its own.

The canary unzips the built layer into an empty directory and runs real handlers through the
real awslambdaric runtime client with only that directory, the function's code, the runtime
client and the standard library on the path (python -S): no site-packages, no source tree.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY
from tests.support.lambda_runtime import REPO_ROOT, lambda_runtime

BUILD = REPO_ROOT / "layers" / "build.py"
SIZE_BUDGET_BYTES = 250 * 1024
EXAMPLES = REPO_ROOT / "examples"


def _build(output: Path) -> str:
    subprocess.run([sys.executable, str(BUILD), "--output", str(output)], check=True,
                   capture_output=True, text=True, timeout=300)
    return hashlib.sha256(output.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def layer_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("layer") / "amp-lite-layer.zip"
    _build(output)
    return output


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


@pytest.fixture
def layer_dir(layer_zip: Path, tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "opt"
    target.mkdir()
    with zipfile.ZipFile(layer_zip) as archive:
        archive.extractall(target)
    yield target / "python"


def test_building_twice_gives_the_same_bytes(layer_zip: Path, tmp_path: Path) -> None:
    # WHEN the layer is built a second time, elsewhere
    again = _build(tmp_path / "again.zip")
    # THEN the archives are byte-identical
    assert again == hashlib.sha256(layer_zip.read_bytes()).hexdigest()


def test_layer_fits_the_size_budget(layer_zip: Path) -> None:
    assert layer_zip.stat().st_size < SIZE_BUDGET_BYTES


def test_layer_layout_and_contents(layer_zip: Path) -> None:
    with zipfile.ZipFile(layer_zip) as archive:
        infos = archive.infolist()
    names = [i.filename for i in infos]
    # python/ at the root, amp_lite and urllib3 in it
    assert all(n.startswith("python/") for n in names)
    assert "python/amp_lite/__init__.py" in names
    assert "python/amp_lite/aws_lambda.py" in names
    assert "python/amp_lite/replay.py" in names
    assert "python/urllib3/__init__.py" in names
    # never boto3/botocore, no bytecode, nothing that records the build machine
    assert not any(n.startswith(("python/boto3", "python/botocore", "python/s3transfer"))
                   for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not any(n.endswith(("direct_url.json", "INSTALLER", "REQUESTED")) for n in names)
    # only what runs in a function: no test helpers (FakeAmplitude, TLS), nor in the RECORD
    assert not any(n.startswith(("python/amp_lite/testing/", "python/amp_lite/_demo"))
                   for n in names)
    with zipfile.ZipFile(layer_zip) as archive:
        record = next(archive.read(n).decode() for n in names
                      if n.startswith("python/amp_lite-") and n.endswith("/RECORD"))
    assert "amp_lite/testing/" not in record
    # pure Python: one zip for x86_64 and arm64
    assert not any(n.endswith((".so", ".pyd")) for n in names)
    # reproducible metadata: sorted, fixed times and permissions
    assert names == sorted(names)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}


def test_layer_pins_a_compatible_urllib3(layer_zip: Path) -> None:
    with zipfile.ZipFile(layer_zip) as archive:
        versions = [n.split("/")[1] for n in archive.namelist()
                    if n.startswith("python/urllib3-") and n.endswith(".dist-info/METADATA")]
    assert len(versions) == 1
    version = versions[0].removeprefix("urllib3-").removesuffix(".dist-info")
    major = int(version.split(".")[0])
    assert version != "2.2.0" and 1 <= major < 3
    pinned = (REPO_ROOT / "layers" / "requirements.txt").read_text()
    assert f"urllib3=={version}" in pinned


def test_makefile_target_used_by_sam_build(tmp_path: Path) -> None:
    # GIVEN the makefile SAM runs for BuildMethod: makefile (sam build --build-in-source)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    # WHEN its target runs with ARTIFACTS_DIR set, as SAM does
    subprocess.run(["make", "-C", str(REPO_ROOT / "layers" / "amp_lite"), "build-AmpLiteLayer",
                    f"ARTIFACTS_DIR={artifacts}", f"PYTHON={sys.executable}"],
                   check=True, capture_output=True, timeout=300,
                   env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    # THEN the layer content is there, python/ at its root
    assert (artifacts / "python" / "amp_lite" / "__init__.py").is_file()
    assert (artifacts / "python" / "urllib3" / "__init__.py").is_file()
    assert not list(artifacts.rglob("__pycache__"))


@pytest.mark.parametrize(("handler", "extra_env"), [
    ("lambda_handler.handler", {}),
    ("amp_lite.aws_lambda.handler", {"AMP_LITE_HANDLER": "zero_code_handler.handler"}),
])
def test_canary_runs_handlers_from_the_layer_alone(
        layer_dir: Path, runtime_dir: Path, fake: FakeAmplitude, tmp_path: Path,
        handler: str, extra_env: dict[str, str]) -> None:
    # GIVEN only the unzipped layer, the function code and the runtime client on the path
    env = {"AMPLITUDE_API_KEY": API_KEY, "AMPLITUDE_SERVER_URL": fake.url,
           "AMP_LITE_SPILL_DIR": str(tmp_path / "spill"), **extra_env}
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
