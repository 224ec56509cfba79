"""The default client's API key from AWS Secrets Manager or SSM Parameter Store (moto server)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import boto3
import pytest

import amp_lite
from amp_lite import ConfigError
from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY


@pytest.fixture(autouse=True)
def fresh_default_client() -> Iterator[None]:
    amp_lite.set_client(None)
    yield
    amp_lite.set_client(None)


@pytest.fixture
def strict_fake() -> Iterator[FakeAmplitude]:
    """A FakeAmplitude that accepts only API_KEY, so a delivery proves the key was right."""
    with FakeAmplitude(api_keys=[API_KEY]) as server:
        yield server


def test_key_from_secrets_manager(aws_env: str, strict_fake: FakeAmplitude,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the key stored in Secrets Manager and named by AMPLITUDE_API_KEY_SECRET
    boto3.client("secretsmanager").create_secret(Name="amp/api-key", SecretString=API_KEY)
    monkeypatch.setenv("AMPLITUDE_API_KEY_SECRET", "amp/api-key")
    monkeypatch.setenv("AMPLITUDE_SERVER_URL", strict_fake.url)
    # WHEN the default client tracks and flushes
    amp_lite.track("From Secret", user_id="user-secret")
    report = amp_lite.flush(timeout_s=10)
    # THEN Amplitude accepted the key
    assert report.delivered == 1
    assert "from provider" in repr(amp_lite.get_client())


def test_key_from_ssm_parameter(aws_env: str, strict_fake: FakeAmplitude,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    boto3.client("ssm").put_parameter(Name="/amp/api-key", Value=API_KEY, Type="SecureString")
    monkeypatch.setenv("AMPLITUDE_API_KEY_PARAMETER", "/amp/api-key")
    monkeypatch.setenv("AMPLITUDE_SERVER_URL", strict_fake.url)
    amp_lite.track("From Parameter", user_id="user-param")
    assert amp_lite.flush(timeout_s=10).delivered == 1


def test_key_is_fetched_once_and_reused(aws_env: str, strict_fake: FakeAmplitude,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the secret, fetched by a first flush
    sm = boto3.client("secretsmanager")
    sm.create_secret(Name="amp/once", SecretString=API_KEY)
    monkeypatch.setenv("AMPLITUDE_API_KEY_SECRET", "amp/once")
    monkeypatch.setenv("AMPLITUDE_SERVER_URL", strict_fake.url)
    amp_lite.track("First", user_id="user-once")
    assert amp_lite.flush(timeout_s=10).delivered == 1
    # WHEN the secret disappears and the client flushes again
    sm.delete_secret(SecretId="amp/once", ForceDeleteWithoutRecovery=True)
    amp_lite.track("Second", user_id="user-once")
    # THEN the key fetched the first time is still used: no second fetch was needed
    assert amp_lite.flush(timeout_s=10).delivered == 1


def test_missing_secret_is_a_config_error_naming_the_variable(
        aws_env: str, strict_fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMPLITUDE_API_KEY_SECRET", "amp/missing")
    monkeypatch.setenv("AMPLITUDE_SERVER_URL", strict_fake.url)
    amp_lite.track("Nope", user_id="user-missing")
    with pytest.raises(ConfigError, match=r"AMPLITUDE_API_KEY_SECRET='amp/missing'"):
        amp_lite.flush(timeout_s=10)
    assert amp_lite.get_client().pending == 1  # nothing accepted was lost


def test_secret_lookup_loads_boto3_only_at_the_first_flush(
        aws_env: str, strict_fake: FakeAmplitude) -> None:
    # GIVEN a fresh interpreter configured for a secret (invariant I6)
    boto3.client("secretsmanager").create_secret(Name="amp/lazy", SecretString=API_KEY)
    script = textwrap.dedent("""
        import sys, amp_lite
        amp_lite.track("Lazy", user_id="user-lazy")
        heavy = [m for m in ("boto3", "botocore", "aws_lambda_powertools") if m in sys.modules]
        assert heavy == [], heavy
        assert amp_lite.flush(timeout_s=10).delivered == 1
        assert "aws_lambda_powertools" in sys.modules
        print("ok")
    """)
    env = {"AMPLITUDE_API_KEY_SECRET": "amp/lazy", "AMPLITUDE_SERVER_URL": strict_fake.url,
           "AWS_ENDPOINT_URL": aws_env, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=False,
                          text=True, timeout=60)
    # THEN nothing AWS-related loaded before the flush, and the flush delivered
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
