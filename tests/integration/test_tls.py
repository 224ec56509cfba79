"""TLS certificate verification is on by default and cannot be turned off by accident.

A FakeAmplitude on 127.0.0.1 serves HTTPS with a certificate from a CA made for each test
(amp_lite.testing.tls): refused by default, accepted with the CA configured, refused for the
wrong host name even with the CA trusted. No traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from amp_lite import Amplitude, ConfigError, DeliveryReport
from amp_lite.overflow import LocalSpill
from amp_lite.testing import FakeAmplitude
from amp_lite.testing.tls import TlsFiles, make_tls_files
from tests.conftest import API_KEY

FLUSH_TIMEOUT_S = 1.0
TOLERANCE_S = 0.5  # generous for CI: the flush itself must end by its deadline (I3)
EVENTS = 3
UNDELIVERED_REASONS = {"deadline", "retries_exhausted"}


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def https_fake(tls_files: TlsFiles) -> Iterator[FakeAmplitude]:
    with FakeAmplitude(tls=tls_files) as server:
        yield server


URLLIB3_MAJOR = int(urllib3.__version__.split(".")[0])


def make_client(fake: FakeAmplitude, tmp_path: Path, **kwargs: object) -> Amplitude:
    return Amplitude(API_KEY, server_url=fake.url, overflow=LocalSpill(tmp_path / "spill"),
                     flush_timeout_s=FLUSH_TIMEOUT_S, **kwargs)  # type: ignore[arg-type]


def track_users(client: Amplitude) -> list[str]:
    ids = [client.track("page_view", user_id=f"user-{i:05d}") for i in range(EVENTS)]
    return [i for i in ids if i is not None]


def timed_flush(client: Amplitude) -> tuple[DeliveryReport, float]:
    started = time.monotonic()
    report = client.flush()
    return report, time.monotonic() - started


def assert_refused(fake: FakeAmplitude, report: DeliveryReport, elapsed_s: float,
                   caplog: pytest.LogCaptureFixture, tmp_path: Path, *,
                   in_handshake: bool = True) -> None:
    """Nothing reached the server; every event overflowed to the spill, within the deadline,
    after attempts that failed in the TLS handshake (`in_handshake`: as the server saw it)."""
    assert fake.events == [] and fake.requests == []
    if in_handshake:
        assert fake.wait_until(lambda: fake.handshake_failures >= 1)
    assert report.balanced and report.tracked == EVENTS
    assert (report.delivered, report.overflowed, report.dropped) == (0, EVENTS, 0)
    assert dict(report.overflowed_to) == {"local_spill": EVENTS}
    assert set(report.overflowed_reasons) <= UNDELIVERED_REASONS
    assert report.attempts >= 1
    assert elapsed_s < FLUSH_TIMEOUT_S + TOLERANCE_S
    assert any(r.getMessage().endswith(": tls") for r in caplog.records)
    assert any((tmp_path / "spill").iterdir())


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="amp_lite")
    return caplog


def test_default_client_refuses_a_server_signed_by_an_unknown_ca(
        https_fake: FakeAmplitude, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        debug_log: pytest.LogCaptureFixture) -> None:
    # GIVEN an HTTPS server whose CA nobody trusts, and a default client (no ca_certs, no
    # SSL_CERT_FILE)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    assert https_fake.url.startswith("https://127.0.0.1:")
    client = make_client(https_fake, tmp_path)
    track_users(client)
    # WHEN it flushes
    report, elapsed_s = timed_flush(client)
    # THEN the handshake is refused, nothing is delivered, and the events overflow in time
    assert_refused(https_fake, report, elapsed_s, debug_log, tmp_path)


def test_ca_certs_argument_trusts_the_ca(https_fake: FakeAmplitude, tls_files: TlsFiles,
                                         tmp_path: Path) -> None:
    # GIVEN a client told to trust our CA
    client = make_client(https_fake, tmp_path, ca_certs=tls_files.ca_cert)
    ids = track_users(client)
    # WHEN it flushes
    report, _ = timed_flush(client)
    # THEN every event reached the server over HTTPS
    assert report.balanced and report.delivered == EVENTS and report.overflowed == 0
    assert https_fake.insert_ids == ids
    assert https_fake.handshake_failures == 0


def test_ssl_cert_file_trusts_the_ca(https_fake: FakeAmplitude, tls_files: TlsFiles,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN SSL_CERT_FILE naming our CA, and no ca_certs argument
    monkeypatch.setenv("SSL_CERT_FILE", tls_files.ca_cert)
    client = make_client(https_fake, tmp_path)
    ids = track_users(client)
    # WHEN it flushes
    report, _ = timed_flush(client)
    # THEN every event reached the server
    assert report.balanced and report.delivered == EVENTS
    assert https_fake.insert_ids == ids


def test_certificate_for_another_host_is_refused_even_with_the_ca_trusted(
        tmp_path: Path, debug_log: pytest.LogCaptureFixture) -> None:
    # GIVEN a trusted CA whose server certificate names only other.test, served on 127.0.0.1
    files = make_tls_files(tmp_path / "other", hosts=("other.test",))
    with FakeAmplitude(tls=files) as fake:
        client = make_client(fake, tmp_path, ca_certs=files.ca_cert)
        track_users(client)
        # WHEN the client connects to 127.0.0.1
        report, elapsed_s = timed_flush(client)
        # THEN the host name check refuses it: nothing delivered, events overflowed in time
        # (urllib3 2 has OpenSSL check the name during the handshake; 1.26 checks it itself
        # right after, so the server sees a handshake that succeeded and no request)
        assert_refused(fake, report, elapsed_s, debug_log, tmp_path,
                       in_handshake=URLLIB3_MAJOR >= 2)


def test_amplitude_has_no_switch_that_turns_verification_off() -> None:
    # GIVEN the client's constructor
    parameters = set(inspect.signature(Amplitude.__init__).parameters)
    # WHEN we look for a verification switch, and try the usual spelling of one
    switches = {p for p in parameters
                if any(word in p for word in ("verify", "insecure", "cert_reqs", "hostname",
                                              "ssl_context", "unverified"))}
    # THEN there is none, an unknown keyword is a TypeError, and an empty CA path is an error
    assert switches == set()
    with pytest.raises(TypeError):
        Amplitude(API_KEY, verify=False)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="ca_certs"):
        Amplitude(API_KEY, ca_certs="")


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_empty_ca_variable_does_not_turn_verification_off(
        variable: str, https_fake: FakeAmplitude, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, debug_log: pytest.LogCaptureFixture) -> None:
    # GIVEN a CA variable set to the empty string (for requests, empty CURL_CA_BUNDLE once
    # meant "do not verify"); SSL_CERT_FILE="" means "the system store" to amp_lite
    monkeypatch.setenv(variable, "")
    client = make_client(https_fake, tmp_path)
    track_users(client)
    # WHEN it flushes to the server our CA signed
    report, elapsed_s = timed_flush(client)
    # THEN the server is still refused
    assert_refused(https_fake, report, elapsed_s, debug_log, tmp_path)


def test_ca_file_holds_only_the_generated_ca(tls_files: TlsFiles) -> None:
    # GIVEN freshly generated TLS files
    # WHEN the CA file is read
    text = Path(tls_files.ca_cert).read_text()
    # THEN it holds exactly one certificate (no system bundle), and the key is separate
    assert text.count("BEGIN CERTIFICATE") == 1
    assert "PRIVATE KEY" not in text and "PRIVATE KEY" in Path(tls_files.key).read_text()


def test_make_tls_files_without_cryptography_says_how_to_install_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN cryptography cannot be imported
    for name in [m for m in sys.modules if m == "cryptography" or m.startswith("cryptography.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryptography", None)
    # WHEN TLS files are requested
    # THEN the error says what to install
    with pytest.raises(ConfigError, match="pip install cryptography"):
        make_tls_files(tmp_path)


def test_importing_the_testing_helpers_does_not_import_cryptography() -> None:
    # GIVEN a fresh interpreter
    code = ("import json, sys\n"
            "import amp_lite, amp_lite.testing, amp_lite.testing.tls\n"
            "print(json.dumps('cryptography' in sys.modules))\n")
    # WHEN it imports amp_lite and its testing helpers (I6)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, check=False)
    # THEN cryptography was not loaded
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) is False
