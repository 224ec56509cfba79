"""Test helpers for amp_lite users and for amp_lite's own tests.

`FakeAmplitude` is a real HTTP server on 127.0.0.1 that answers like Amplitude's HTTP V2 and
batch APIs, de-duplicates by insert_id, records what it accepted, and can be scripted to fail.
It serves from its own thread (it is a server); the SDK itself never starts one.
"""

from ._fake_server import FakeAmplitude, Fault, RequestRecord

__all__ = ["FakeAmplitude", "Fault", "RequestRecord"]
