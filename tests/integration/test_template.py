"""template.yaml: linted offline by cfn-lint 1.53.3 (with SAM's translator), wired right, and built
and validated by the real SAM CLI (.venv-sam, created by .ci/run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from amp_lite import aws_lambda
from amp_lite.aws_lambda import resolve_handler
from tests.support.lambda_runtime import REPO_ROOT

TEMPLATE = REPO_ROOT / "template.yaml"
CFN_LINT = Path(sys.executable).parent / "cfn-lint"


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !GetAtt, !Sub): kept as {tag: value}."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node)
    else:
        value = loader.construct_mapping(node)  # type: ignore[arg-type]
    return {suffix: value}


_CfnLoader.add_multi_constructor("!", _tag)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    return loaded


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CFN_LINT), str(path)], capture_output=True, text=True,
                          timeout=120, check=False)


def test_cfn_lint_is_the_pinned_version() -> None:
    done = subprocess.run([str(CFN_LINT), "--version"], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "cfn-lint 1.53.3"


def test_template_passes_cfn_lint() -> None:
    done = _lint(TEMPLATE)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("good", "bad", "rule"), [
    ("[ReportBatchItemFailures]", "[ReportBatchItemFailure]", "E3030"),
    ("- !Ref AmpLiteLayer\n", "- !Ref AmpLiteLayerX\n", "E1020"),
    ("Runtime: python3.12", "Runtime: python3.99", "E3030"),
])
def test_cfn_lint_catches_a_broken_template(tmp_path: Path, good: str, bad: str,
                                            rule: str) -> None:
    # The lint only protects us if it sees through SAM: break the template on purpose.
    text = TEMPLATE.read_text()
    assert good in text
    broken = tmp_path / "template.yaml"
    broken.write_text(text.replace(good, bad, 1))
    for folder in ("layers", "examples"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    done = _lint(broken)
    assert done.returncode != 0
    assert rule in done.stdout


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def test_functions_use_the_layer_and_queue_that_exist(template: dict[str, Any]) -> None:
    functions = _resources(template, "AWS::Serverless::Function")
    layers = _resources(template, "AWS::Serverless::LayerVersion")
    queues = _resources(template, "AWS::SQS::Queue")
    assert set(functions) == {"ExampleFunction", "ReplayFunction"}
    for function in functions.values():
        refs = [layer["Ref"] for layer in function["Properties"]["Layers"]
                if isinstance(layer, dict) and "Ref" in layer]
        assert refs and set(refs) <= set(layers)
    example_env = functions["ExampleFunction"]["Properties"]["Environment"]["Variables"]
    assert example_env["AMP_LITE_OVERFLOW_QUEUE_URL"] == {"Ref": "OverflowQueue"}
    event = functions["ReplayFunction"]["Properties"]["Events"]["Overflow"]
    assert event["Type"] == "SQS"
    assert event["Properties"]["Queue"] == {"GetAtt": "OverflowQueue.Arn"}
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert set(queues) == {"OverflowQueue", "OverflowDeadLetterQueue"}


def test_functions_fetching_the_key_from_secrets_manager_have_powertools(
        template: dict[str, Any]) -> None:
    # GIVEN the API key comes from Secrets Manager (AMPLITUDE_API_KEY_SECRET, for every
    # function), fetched with Powertools' parameters utility, which the amp-lite layer lacks
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert "AMPLITUDE_API_KEY_SECRET" in env
    # THEN every function has the public Powertools layer as well, or its events are dropped
    for name, function in _resources(template, "AWS::Serverless::Function").items():
        subs = [str(layer.get("Sub")) for layer in function["Properties"]["Layers"]
                if isinstance(layer, dict)]
        assert any("AWSLambdaPowertoolsPythonV3" in sub for sub in subs), name


def test_queue_settings_follow_the_sqs_event_source_rules(template: dict[str, Any]) -> None:
    queue = template["Resources"]["OverflowQueue"]["Properties"]
    replay_timeout = template["Resources"]["ReplayFunction"]["Properties"]["Timeout"]
    assert queue["VisibilityTimeout"] >= 6 * replay_timeout
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "GetAtt": "OverflowDeadLetterQueue.Arn"}
    assert queue["RedrivePolicy"]["maxReceiveCount"] >= 1
    dlq = template["Resources"]["OverflowDeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] == 1_209_600


def test_layer_is_built_by_the_makefile_for_the_functions_runtime(
        template: dict[str, Any]) -> None:
    layer = template["Resources"]["AmpLiteLayer"]
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    content = REPO_ROOT / layer["Properties"]["ContentUri"]
    makefile = (content / "Makefile").read_text()
    assert "build-AmpLiteLayer:" in makefile
    assert set(layer["Properties"]["CompatibleArchitectures"]) == {"x86_64", "arm64"}
    # its bytecode is for one runtime: the functions' (Globals), the one the Makefile compiles
    runtime = template["Globals"]["Function"]["Runtime"]
    assert layer["Properties"]["CompatibleRuntimes"] == [runtime]
    assert f"LAYER_RUNTIME ?= {runtime}\n" in makefile
    for name, function in _resources(template, "AWS::Serverless::Function").items():
        assert function["Properties"].get("Runtime", runtime) == runtime, name


# The real SAM CLI, in its own virtualenv (its pinned dependencies clash with the dev extra's
# cfn-lint 1.53.3): .ci/run creates .venv-sam before the tests. Elsewhere, create it the same
# way (README, "Run the tests"), or put `sam` on PATH, or set AMP_LITE_SAM to its path.
SAM_VENV_HINT = "python3 -m venv .venv-sam && .venv-sam/bin/pip install -q -r .ci/sam.txt"


def _sam() -> Path:
    configured = os.environ.get("AMP_LITE_SAM")
    candidates = [Path(configured)] if configured else []
    candidates.append(REPO_ROOT / ".venv-sam" / "bin" / "sam")
    on_path = shutil.which("sam")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"the SAM CLI is missing (looked at {', '.join(map(str, candidates))}): "
                f"{SAM_VENV_HINT}", pytrace=False)


def _sam_env(home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1",
            "LANG": os.environ.get("LANG", "C.UTF-8")}


def _project_copy(tmp_path: Path) -> Path:
    """What `sam build` reads: the template and the folders it names."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy2(TEMPLATE, project / "template.yaml")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for name in ("amp_lite", "layers", "examples"):
        shutil.copytree(REPO_ROOT / name, project / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, project / name)
    return project


@pytest.mark.parametrize("flags", [[], ["--build-in-source"]], ids=["plain", "in-source"])
def test_sam_build_builds_the_layer(tmp_path: Path, flags: list[str]) -> None:
    # GIVEN a copy of the project and the real SAM CLI (no Docker: makefile and pip builds)
    sam = _sam()
    project = _project_copy(tmp_path)
    # WHEN sam build runs, with or without --build-in-source
    done = subprocess.run([str(sam), "build", *flags], cwd=project, env=_sam_env(tmp_path),
                          capture_output=True, text=True, timeout=600, check=False)
    # THEN it succeeds, and the layer holds amp_lite compiled for the functions' runtime
    assert done.returncode == 0, done.stdout + done.stderr
    layer = project / ".aws-sam" / "build" / "AmpLiteLayer" / "python"
    assert (layer / "amp_lite" / "__pycache__" / "__init__.cpython-312.pyc").is_file()
    assert (layer / "urllib3" / "__init__.py").is_file()
    assert not (layer / "amp_lite" / "testing").exists()


def test_sam_validate_lint_passes(tmp_path: Path) -> None:
    sam = _sam()
    project = _project_copy(tmp_path)
    done = subprocess.run([str(sam), "validate", "--lint"], cwd=project,
                          env=_sam_env(tmp_path), capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is a valid SAM Template" in done.stdout + done.stderr


def test_handler_paths_import(template: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    functions = _resources(template, "AWS::Serverless::Function")
    # the replay handler ships in the layer
    replay = functions["ReplayFunction"]["Properties"]["Handler"]
    assert callable(resolve_handler(replay))
    # the example function runs the wrapper, which runs the handler named in AMP_LITE_HANDLER
    example = functions["ExampleFunction"]["Properties"]
    assert example["Handler"] == "amp_lite.aws_lambda.handler"
    monkeypatch.syspath_prepend(str(REPO_ROOT / example["CodeUri"]))
    monkeypatch.setenv("AMP_LITE_HANDLER", example["Environment"]["Variables"]["AMP_LITE_HANDLER"])
    aws_lambda._wrapped_handler.cache_clear()
    try:
        wrapper = aws_lambda.handler  # what the runtime reads at init
        assert callable(wrapper)
        assert wrapper.__name__ == "handler"
        assert wrapper.__module__ == "zero_code_handler"
    finally:
        aws_lambda._wrapped_handler.cache_clear()


def test_least_privilege_policies(template: dict[str, Any]) -> None:
    functions = _resources(template, "AWS::Serverless::Function")
    example = [next(iter(p)) for p in functions["ExampleFunction"]["Properties"]["Policies"]]
    replay = [next(iter(p)) for p in functions["ReplayFunction"]["Properties"]["Policies"]]
    assert example == ["SQSSendMessagePolicy", "AWSSecretsManagerGetSecretValuePolicy"]
    assert replay == ["SQSPollerPolicy", "AWSSecretsManagerGetSecretValuePolicy"]


def test_parameters_and_outputs(template: dict[str, Any]) -> None:
    assert {"AmplitudeApiKeySecretArn", "AmplitudeServerZone",
            "PowertoolsLayerVersion"} <= set(template["Parameters"])
    assert template["Parameters"]["AmplitudeServerZone"]["AllowedValues"] == ["US", "EU"]
    assert {"AmpLiteLayerArn", "OverflowQueueUrl"} <= set(template["Outputs"])
