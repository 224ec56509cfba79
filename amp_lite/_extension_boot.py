"""The start of the amp-lite Lambda extension: register first, import the rest after.

Lambda starts the runtime's init only once every extension has registered, so the time from
this process's start to its register call is added to every cold start. This file is run as
a script (`layers/extensions/amp-lite` execs it with `python -S`) and imports only `os`,
`socket` and `sys` before registering; `import amp_lite` (tens of ms) comes after, while the
runtime initialises. Protocol: https://docs.aws.amazon.com/lambda/latest/dg/runtimes-extensions-api.html
"""

from __future__ import annotations

import os
import socket
import sys

REGISTER_PATH = "/2020-01-01/extension/register"
REGISTER_TIMEOUT_S = 10.0  # Lambda's own limit on the init phase
ENV_EXTENSION = "AMP_LITE_EXTENSION"  # as amp_lite._config names it (not imported: see above)


def register(address: str, name: str, events: list[str]) -> str:
    """POST the registration; returns the Lambda-Extension-Identifier. Raises RuntimeError
    naming what the API answered, OSError when it cannot be reached."""
    host, _, port = address.rpartition(":")
    body = ('{"events": [' + ", ".join(f'"{event}"' for event in events) + "]}").encode()
    request = (f"POST {REGISTER_PATH} HTTP/1.1\r\nHost: {address}\r\n"
               f"Lambda-Extension-Name: {name}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port)), timeout=REGISTER_TIMEOUT_S) as connection:
        connection.sendall(request)
        reply = b""
        while chunk := connection.recv(65536):  # `Connection: close`: read to the end
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = {key.strip().lower(): value.strip()
               for key, _, value in (line.partition(":") for line in header_lines)}
    identifier = headers.get("lambda-extension-identifier")
    if status != 200 or not identifier:
        raise RuntimeError(f"register answered {status_line!r}: {payload[:200]!r}")
    return identifier


def main(argv: list[str]) -> int:
    # run as a script: sys.path[0] is this file's folder (amp_lite/), whose modules must not
    # shadow top-level names; the folder above it (the layer's python/) is where amp_lite is
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(here))
    name = argv[1] if len(argv) > 1 else "amp-lite"
    enabled = os.environ.get(ENV_EXTENSION, "").strip().lower() == "on"
    # Disabled, it must still not exit (an extension that exits fails the init, even with
    # status 0): it registers for SHUTDOWN only, holds no invocation, and waits for the end.
    events = ["INVOKE", "SHUTDOWN"] if enabled else ["SHUTDOWN"]
    try:
        identifier = register(os.environ["AWS_LAMBDA_RUNTIME_API"], name, events)
    except (KeyError, OSError, RuntimeError) as exc:
        print(f"amp_lite extension: could not register with the Extensions API: {exc!r}",
              file=sys.stderr, flush=True)
        return 1
    _add_runtime_packages()
    from amp_lite._extension import run  # after registering, on purpose

    return run(identifier, enabled=enabled)


def _add_runtime_packages() -> None:
    """After the layer, what the runtime itself has (boto3 for an SQS overflow queue): this
    interpreter's site-packages (`-S` left them out) and /var/runtime, where Lambda's managed
    Python runtimes keep boto3."""
    import sysconfig

    for folder in (sysconfig.get_paths()["purelib"], "/var/runtime"):
        if os.path.isdir(folder) and folder not in sys.path:
            sys.path.append(folder)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
