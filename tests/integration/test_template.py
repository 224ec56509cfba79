"""template.yaml: linted offline by cfn-lint 1.53.3 (with SAM's translator), wired right, and built
and validated by the real SAM CLI (.venv-sam, created by .ci/run)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from amp_lite import aws_lambda
from amp_lite.aws_lambda import resolve_handler
from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY
from tests.support.lambda_runtime import REPO_ROOT, lambda_runtime

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
    ("LogFormat: JSON", "LogFormat: Jsonish", "E3030"),
    ("    Default: 30\n", "    Default: 31\n", "E2015"),  # not a CloudWatch retention
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
        resources = [ref for ref in refs if ref in template["Resources"]]
        assert resources and set(resources) <= set(layers)
        assert set(refs) - set(resources) <= set(template["Parameters"])
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
    # THEN every function has the public Powertools layer as well, or its events are dropped:
    # its ARN read from the SSM parameter Powertools publishes, for the runtime and architecture
    # the functions run on (https://docs.aws.amazon.com/powertools/python/latest/getting-started/
    # install/#using-ssm-parameter-store: /aws/service/powertools/python/<arch>/<runtime>/latest)
    globals_ = template["Globals"]["Function"]
    (arch,) = globals_["Architectures"]
    parameter = template["Parameters"]["PowertoolsLayerArnParameter"]
    assert parameter["Type"] == "AWS::SSM::Parameter::Value<String>"
    assert parameter["Default"] == (
        f"/aws/service/powertools/python/{arch}/{globals_['Runtime']}/latest")
    for name, function in _resources(template, "AWS::Serverless::Function").items():
        assert {"Ref": "PowertoolsLayerArnParameter"} in function["Properties"]["Layers"], name
        # one runtime and architecture for all, so the one parameter fits every function
        assert not {"Runtime", "Architectures"} & set(function["Properties"]), name


def test_queue_settings_follow_the_sqs_event_source_rules(template: dict[str, Any]) -> None:
    queue = template["Resources"]["OverflowQueue"]["Properties"]
    replay_timeout = template["Resources"]["ReplayFunction"]["Properties"]["Timeout"]
    assert queue["VisibilityTimeout"] >= 6 * replay_timeout
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "GetAtt": "OverflowDeadLetterQueue.Arn"}
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 20
    dlq = template["Resources"]["OverflowDeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] == 1_209_600
    # a standard queue's message keeps its enqueue time in the DLQ: the source must expire first
    assert queue["MessageRetentionPeriod"] < dlq["MessageRetentionPeriod"]
    assert queue["SqsManagedSseEnabled"] is True
    assert dlq["SqsManagedSseEnabled"] is True


def test_only_the_overflow_queue_may_use_the_dead_letter_queue(template: dict[str, Any]) -> None:
    queue = template["Resources"]["OverflowQueue"]["Properties"]
    allow = template["Resources"]["OverflowDeadLetterQueue"]["Properties"]["RedriveAllowPolicy"]
    assert allow["redrivePermission"] == "byQueue"
    # the overflow queue's ARN, spelt from its name (a !GetAtt would be a circular dependency)
    assert allow["sourceQueueArns"] == [{"Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:"
                                                "${AWS::AccountId}:" + queue["QueueName"]["Sub"]}]


# amp_lite.replay's back-off (README, "The replay consumer"): a failed record is visible again
# 30 s after its first receive, twice as long after each further one, at most SQS's 12 h.
BACKOFF_FIRST_S = 30
BACKOFF_CAP_S = 12 * 3600


def _dead_lettered_after_s(max_receive_count: int, first_s: int = BACKOFF_FIRST_S) -> int:
    """When SQS moves a record that always fails: at the receive after maxReceiveCount."""
    return sum(min(first_s * 2 ** n, BACKOFF_CAP_S) for n in range(max_receive_count))


@pytest.mark.parametrize("first_s", [BACKOFF_FIRST_S, 2 * BACKOFF_FIRST_S])
def test_max_receive_count_fits_the_replay_backoff_and_the_retentions(
        template: dict[str, Any], first_s: int) -> None:
    # first_s doubled: the same holds if the schedule starts one step later
    queue = template["Resources"]["OverflowQueue"]["Properties"]
    dlq = template["Resources"]["OverflowDeadLetterQueue"]["Properties"]
    moved_at = _dead_lettered_after_s(queue["RedrivePolicy"]["maxReceiveCount"], first_s)
    # a day-long outage drains by itself: no record is dead-lettered within the first day
    assert moved_at > 24 * 3600
    # a record that never succeeds reaches the DLQ before retention would delete it unseen
    # (an expired message is deleted, not dead-lettered), with hours to spare for polling
    assert moved_at + 6 * 3600 < queue["MessageRetentionPeriod"]
    # and the DLQ still holds it for a week after (its retention counts from the first enqueue)
    assert dlq["MessageRetentionPeriod"] - moved_at > 7 * 24 * 3600
    # the schedule as the template's comment states it: 17 h in the first 11 receives
    assert _dead_lettered_after_s(11) == 30 * (2 ** 11 - 1)


def test_layer_versions_are_retained(template: dict[str, Any],
                                    transformed: dict[str, Any]) -> None:
    # your functions reference AmpLiteLayerArn: a stack update must not delete the version
    for layer in _resources(template, "AWS::Serverless::LayerVersion").values():
        assert layer["Properties"]["RetentionPolicy"] == "Retain"
    deployed = _resources(transformed, "AWS::Lambda::LayerVersion")
    assert deployed
    assert {layer.get("DeletionPolicy") for layer in deployed.values()} == {"Retain"}


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


@pytest.fixture(scope="module")
def transformed() -> Iterator[dict[str, Any]]:
    """The template as CloudFormation receives it: SAM's translator, as cfn-lint runs it."""
    from cfnlint.decode import decode
    from cfnlint.template.transforms._sam import Transform

    saved = os.environ.get("AWS_DEFAULT_REGION")
    loaded, errors = decode(str(TEMPLATE))
    assert not errors and loaded is not None
    transform = Transform(str(TEMPLATE), loaded, "us-east-1")
    try:
        assert transform.transform_template() == []
        # plain JSON: no cfn-lint node types, nothing the checks below could miss
        yield json.loads(json.dumps(transform.template()))
    finally:  # the translator sets it for its ARNs; other tests must not inherit it
        if saved is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)
        else:
            os.environ["AWS_DEFAULT_REGION"] = saved


def _policies(role: dict[str, Any]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(condition, statement) for each statement of a role's inline policies."""
    for entry in role["Properties"].get("Policies", []):
        condition, policy = None, entry
        if "Fn::If" in entry:
            condition, policy, otherwise = entry["Fn::If"]
            assert otherwise == {"Ref": "AWS::NoValue"}
        for statement in policy["PolicyDocument"]["Statement"]:
            yield condition, statement


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


def _role_of(transformed: dict[str, Any], function: str) -> dict[str, Any]:
    ref = transformed["Resources"][function]["Properties"]["Role"]
    assert set(ref) == {"Fn::GetAtt"} and ref["Fn::GetAtt"][1] == "Arn"
    role: dict[str, Any] = transformed["Resources"][ref["Fn::GetAtt"][0]]
    assert role["Type"] == "AWS::IAM::Role"
    return role


def test_roles_are_explicit_with_no_managed_policy(transformed: dict[str, Any]) -> None:
    # SAM's own role for an SQS event source carries AWSLambdaSQSQueueExecutionRole (receive
    # and delete on every queue of the account) and AWSLambdaBasicExecutionRole (every log
    # group): with explicit roles, SAM attaches neither, nor generates a role at all
    roles = _resources(transformed, "AWS::IAM::Role")
    assert set(roles) == {"ExampleFunctionRole", "ReplayFunctionRole"}
    for name, role in roles.items():
        assert "ManagedPolicyArns" not in role["Properties"], name
        assert {"Key": "lambda:createdBy", "Value": "SAM"} not in role["Properties"].get(
            "Tags", []), name
        for _, statement in _policies(role):
            assert statement["Effect"] == "Allow"
            assert statement["Resource"] != "*", (name, statement)
            assert not any(a.endswith("*") for a in _actions(statement)), (name, statement)
    assert "ManagedPolicy" not in json.dumps(transformed)
    assert "AWSLambdaSQSQueueExecutionRole" not in json.dumps(transformed)


def test_each_role_holds_only_what_its_function_does(transformed: dict[str, Any]) -> None:
    queue = {"Fn::GetAtt": ["OverflowQueue", "Arn"]}
    secret = {"Ref": "AmplitudeApiKeySecretArn"}
    expected = {
        "ExampleFunction": {
            ("logs:CreateLogStream", "logs:PutLogEvents"):
                {"Fn::GetAtt": ["ExampleFunctionLogGroup", "Arn"]},
            ("sqs:SendMessage",): queue,
            ("secretsmanager:GetSecretValue",): secret,
        },
        "ReplayFunction": {
            ("logs:CreateLogStream", "logs:PutLogEvents"):
                {"Fn::GetAtt": ["ReplayFunctionLogGroup", "Arn"]},
            # ChangeMessageVisibility: the replay sets each failed record's back-off
            ("sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes",
             "sqs:ReceiveMessage"): queue,
            ("secretsmanager:GetSecretValue",): secret,
        },
    }
    for function, grants in expected.items():
        unconditional = {tuple(sorted(_actions(s))): s["Resource"]
                         for condition, s in _policies(_role_of(transformed, function))
                         if condition is None}
        assert unconditional == grants, function


def test_kms_decrypt_only_for_a_customer_managed_key(transformed: dict[str, Any]) -> None:
    parameter = transformed["Parameters"]["AmplitudeApiKeySecretKmsKeyArn"]
    assert parameter["Default"] == ""
    assert transformed["Conditions"]["HasSecretKmsKey"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AmplitudeApiKeySecretKmsKeyArn"}, ""]}]}
    for function in ("ExampleFunction", "ReplayFunction"):
        kms = [(condition, s) for condition, s in _policies(_role_of(transformed, function))
               if any(a.startswith("kms:") for a in _actions(s))]
        assert len(kms) == 1, function
        ((condition, statement),) = kms
        assert condition == "HasSecretKmsKey"
        assert _actions(statement) == ["kms:Decrypt"]
        assert statement["Resource"] == {"Ref": "AmplitudeApiKeySecretKmsKeyArn"}
        # through Secrets Manager only
        assert set(statement["Condition"]["StringEquals"]) == {"kms:ViaService"}


def test_the_replay_consumes_through_its_explicit_role(transformed: dict[str, Any]) -> None:
    mappings = _resources(transformed, "AWS::Lambda::EventSourceMapping")
    assert [m["Properties"]["EventSourceArn"] for m in mappings.values()] == [
        {"Fn::GetAtt": ["OverflowQueue", "Arn"]}]
    assert transformed["Resources"]["ReplayFunction"]["Properties"]["Role"] == {
        "Fn::GetAtt": ["ReplayFunctionRole", "Arn"]}


def test_no_partition_is_hard_coded(transformed: dict[str, Any]) -> None:
    # arn:aws: is wrong in China (aws-cn) and GovCloud (aws-us-gov): ${AWS::Partition}
    assert "arn:aws:" not in TEMPLATE.read_text()
    assert "arn:aws:" not in json.dumps(transformed)


def test_parameters_and_outputs(template: dict[str, Any]) -> None:
    assert {"AmplitudeApiKeySecretArn", "AmplitudeApiKeySecretKmsKeyArn", "AmplitudeServerZone",
            "PowertoolsLayerArnParameter", "LogRetentionInDays",
            "AlarmActionArn"} <= set(template["Parameters"])
    assert "PowertoolsLayerVersion" not in template["Parameters"]  # the SSM parameter instead
    assert template["Parameters"]["AmplitudeServerZone"]["AllowedValues"] == ["US", "EU"]
    assert {"AmpLiteLayerArn", "OverflowQueueUrl", "OverflowDeadLetterQueueUrl",
            "PowertoolsLayerArn"} <= set(template["Outputs"])


# CloudWatch Logs' retention values (AWS::Logs::LogGroup RetentionInDays)
RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827,
                  2192, 2557, 2922, 3288, 3653]


def test_every_function_logs_json_to_its_own_group_with_a_retention(
        template: dict[str, Any]) -> None:
    retention = template["Parameters"]["LogRetentionInDays"]
    assert retention["AllowedValues"] == RETENTION_DAYS
    assert retention["Default"] in RETENTION_DAYS
    functions = _resources(template, "AWS::Serverless::Function")
    groups = _resources(template, "AWS::Logs::LogGroup")
    assert len(groups) == len(functions)
    for name, function in functions.items():
        props = function["Properties"]
        logging_config = props["LoggingConfig"]
        assert logging_config["LogFormat"] == "JSON", name
        # the dropped-events filter reads an INFO line: a higher level would hide it
        assert logging_config["ApplicationLogLevel"] == "INFO", name
        group = template["Resources"][logging_config["LogGroup"]["Ref"]]
        assert group["Type"] == "AWS::Logs::LogGroup"
        # the name Lambda itself would use: /aws/lambda/<function name>
        assert group["Properties"]["LogGroupName"] == {
            "Sub": "/aws/lambda/" + props["FunctionName"]["Sub"]}, name
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionInDays"}


# -- the dropped-events metric filter, against the lines the SDK really writes -----------------
#
# A matcher for the subset of CloudWatch's filter pattern syntax the template uses (documented
# at https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/FilterAndPatternSyntax.html): a
# JSON pattern `{ C && C ... }` on an event that is a JSON object, where each C is
#   $.a.b = "text"     the (nested) field is a string equal to text (no `*` wildcard here), or
#   $.a.b > N          the field is a number greater than N (also >=, <, <=, =, != on numbers).
# Anything else is refused, so the pattern cannot drift past what this matcher understands; a
# metric value `$.a.b` is the number at that selector (lines without one publish nothing).

_STRING = re.compile(r'\$\.([\w.]+) = "([^"*]*)"')
_NUMERIC = re.compile(r"\$\.([\w.]+) (>=|<=|!=|>|<|=) (-?\d+(?:\.\d+)?)")
_COMPARE = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__,
            "=": float.__eq__, "!=": float.__ne__}


def _select(record: Any, selector: str) -> Any:
    for key in selector.split("."):
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def _filter_matches(pattern: str, event: str) -> bool:
    body = pattern.strip()
    assert body.startswith("{") and body.endswith("}"), pattern
    try:
        record = json.loads(event)
    except ValueError:
        return False
    if not isinstance(record, dict):
        return False
    for condition in (c.strip() for c in body[1:-1].split("&&")):
        if text := _STRING.fullmatch(condition):
            if _select(record, text.group(1)) != text.group(2):
                return False
            continue
        number = _NUMERIC.fullmatch(condition)
        assert number is not None, f"outside the supported subset: {condition!r}"
        selector, operator, operand = number.groups()
        value = _select(record, selector)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not _COMPARE[operator](float(value), float(operand)):
            return False
    return True


def _metric_value(selector: str, event: str) -> float:
    assert selector.startswith("$."), selector
    value = _select(json.loads(event), selector[2:])
    assert isinstance(value, (int, float)) and not isinstance(value, bool), value
    return float(value)


@pytest.mark.parametrize(("pattern", "event", "matches"), [
    ('{ $.a = "x" }', '{"a": "x"}', True),
    ('{ $.a = "x" }', '{"a": "xy"}', False),
    ('{ $.a = "x" }', '{"a": 1}', False),
    ('{ $.a = "x" }', 'a = "x"', False),
    ('{ $.a.b > 0 }', '{"a": {"b": 2}}', True),
    ('{ $.a.b > 0 }', '{"a": {"b": 0}}', False),
    ('{ $.a.b > 0 }', '{"a": {"b": "2"}}', False),
    ('{ $.a.b > 0 }', '{"a": "b"}', False),
    ('{ $.a = "x" && $.c >= 10 }', '{"a": "x", "c": 10}', True),
    ('{ $.a = "x" && $.c >= 10 }', '{"a": "x", "c": 9.5}', False),
])
def test_the_filter_matcher_itself(pattern: str, event: str, matches: bool) -> None:
    assert _filter_matches(pattern, event) is matches


def _lambda_json_log(tmp_path: Path, event: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The example function's log lines under the real runtime client, in Lambda's JSON format."""
    template = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    function = template["Resources"]["ExampleFunction"]["Properties"]
    logging_config = function["LoggingConfig"]
    runtime_env = {
        # what Lambda sets from LoggingConfig
        "AWS_LAMBDA_LOG_FORMAT": logging_config["LogFormat"],
        "AWS_LAMBDA_LOG_LEVEL": logging_config["ApplicationLogLevel"],
        "AMP_LITE_LOG_LEVEL": template["Globals"]["Function"]["Environment"]["Variables"][
            "AMP_LITE_LOG_LEVEL"],
        "AMP_LITE_HANDLER": function["Environment"]["Variables"]["AMP_LITE_HANDLER"],
        "AMP_LITE_SPILL_DIR": str(tmp_path / "spill"),
        **env,
    }
    with lambda_runtime(function["Handler"], env=runtime_env,
                        python_path=[REPO_ROOT / function["CodeUri"]],
                        log_dir=tmp_path) as runtime:
        assert runtime.api.invoke(event).kind == "response"
        output = runtime.output()
    return [line for line in output.splitlines() if line.strip()]


def _summary(line: str) -> dict[str, Any] | None:
    message = json.loads(line).get("message", "")
    found = re.fullmatch(r"amp_lite flush (\{.*\})", message)
    return json.loads(found.group(1)) if found else None


@pytest.fixture(scope="module")
def dropped_filter(template: dict[str, Any]) -> dict[str, Any]:
    (metric_filter,) = _resources(template, "AWS::Logs::MetricFilter").values()
    props: dict[str, Any] = metric_filter["Properties"]
    return props


def test_the_dropped_events_filter_counts_the_events_a_flush_dropped(
        dropped_filter: dict[str, Any], tmp_path: Path) -> None:
    # GIVEN the example function with no API key: every event it tracks is dropped
    lines = _lambda_json_log(tmp_path, {"user_id": "user-42", "items": ["a"] * 12}, {})
    summaries = [(line, _summary(line)) for line in lines if _summary(line) is not None]
    (line, summary), = summaries
    assert summary is not None and summary["dropped"] == 12
    # THEN the filter matches the flush summary line, and nothing else the invocation logged
    # (the ERROR line saying so must not count the same loss twice)
    assert _filter_matches(dropped_filter["FilterPattern"], line)
    assert [x for x in lines if _filter_matches(dropped_filter["FilterPattern"], x)] == [line]
    # AND the metric is the number of events dropped
    (transformation,) = dropped_filter["MetricTransformations"]
    assert _metric_value(transformation["MetricValue"], line) == 12


@pytest.mark.parametrize("items", [1, 3])
def test_the_dropped_events_filter_ignores_flushes_that_dropped_nothing(
        dropped_filter: dict[str, Any], tmp_path: Path, items: int) -> None:
    # GIVEN the example function delivering to a (local) Amplitude
    with FakeAmplitude() as fake:
        lines = _lambda_json_log(tmp_path, {"user_id": "user-42", "items": ["a"] * items},
                                 {"AMPLITUDE_API_KEY": API_KEY,
                                  "AMPLITUDE_SERVER_URL": fake.url})
        assert len(fake.events) == items
    summaries = [s for s in map(_summary, lines) if s is not None]
    assert [(s["delivered"], s["dropped"]) for s in summaries] == [(items, 0)]
    # THEN nothing it logged matches
    assert not [x for x in lines if _filter_matches(dropped_filter["FilterPattern"], x)]


def test_the_dropped_events_filter_ignores_other_summaries(dropped_filter: dict[str, Any]) -> None:
    # the replay's own summary line is another matter (its failures stay queued), and a record
    # without the field (a text-format line) publishes nothing
    pattern = dropped_filter["FilterPattern"]
    assert not _filter_matches(pattern, json.dumps({
        "level": "INFO", "logger": "amp_lite",
        "message": 'amp_lite replay {"delivered": 3, "messages": 1, "unsettled": {"x": 2}}'}))
    assert not _filter_matches(pattern, json.dumps({
        "level": "INFO", "logger": "amp_lite", "message": 'amp_lite flush {"dropped": 4}'}))


def test_alarms_on_dropped_events_and_on_the_dead_letter_queue(template: dict[str, Any]) -> None:
    alarms = _resources(template, "AWS::CloudWatch::Alarm")
    (metric_filter,) = _resources(template, "AWS::Logs::MetricFilter").values()
    # the filter reads the log group of the function that tracks events
    assert metric_filter["Properties"]["LogGroupName"] == template["Resources"][
        "ExampleFunction"]["Properties"]["LoggingConfig"]["LogGroup"]
    (metric,) = metric_filter["Properties"]["MetricTransformations"]
    by_metric = {(a["Properties"]["Namespace"] if isinstance(a["Properties"]["Namespace"], str)
                  else a["Properties"]["Namespace"]["Sub"],
                  a["Properties"]["MetricName"]): a["Properties"] for a in alarms.values()}
    assert set(by_metric) == {(metric["MetricNamespace"]["Sub"], metric["MetricName"]),
                              ("AWS/SQS", "ApproximateNumberOfMessagesVisible")}
    dropped = by_metric[(metric["MetricNamespace"]["Sub"], metric["MetricName"])]
    dlq = by_metric[("AWS/SQS", "ApproximateNumberOfMessagesVisible")]
    assert dlq["Dimensions"] == [{"Name": "QueueName",
                                  "Value": {"GetAtt": "OverflowDeadLetterQueue.QueueName"}}]
    assert dropped["Statistic"] == "Sum"
    for alarm in (dropped, dlq):
        # any message, any dropped event: more than zero
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold")
        assert alarm["TreatMissingData"] == "notBreaching"
        for actions in ("AlarmActions", "OKActions"):
            assert alarm[actions] == {"If": ["HasAlarmAction", [{"Ref": "AlarmActionArn"}],
                                             {"Ref": "AWS::NoValue"}]}
    assert template["Parameters"]["AlarmActionArn"]["Default"] == ""
