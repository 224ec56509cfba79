"""Shared fixtures: a clean environment for every test, and a FakeAmplitude on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from amp_lite.testing import FakeAmplitude

API_KEY = "test-api-key-0123456789abcdef"

_ENV_VARS = ("AMPLITUDE_API_KEY", "AMPLITUDE_SERVER_URL", "AMPLITUDE_SERVER_ZONE",
             "AMP_LITE_FLUSH_TIMEOUT_S", "AMP_LITE_ENABLED", "AMP_LITE_SPILL_DIR", "SSL_CERT_FILE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test sees the caller's Amplitude settings; the default spill lives in tmp_path."""
    for name in _ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    spill_root = tmp_path / "spill-root"
    monkeypatch.setenv("AMP_LITE_SPILL_DIR", str(spill_root))
    return spill_root


@pytest.fixture
def fake() -> Iterator[FakeAmplitude]:
    with FakeAmplitude() as server:
        yield server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto in server mode on 127.0.0.1: a real AWS endpoint over HTTP. Yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 (and Powertools) at the moto server, with dummy credentials; reset its state."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"))
    for name, value in {"AWS_ENDPOINT_URL": moto_server, "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    return moto_server
