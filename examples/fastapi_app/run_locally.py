"""Serve the example on 127.0.0.1:8000 with uvicorn, sending to a local FakeAmplitude.

    python examples/fastapi_app/run_locally.py
    curl -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"user_id": "user-42", "skus": ["sku-1", "sku-2"]}'

Stop it with Ctrl-C: it prints the events the fake Amplitude received.
"""

import os
import sys
from pathlib import Path

import uvicorn

from amp_lite.testing import FakeAmplitude

with FakeAmplitude() as fake:
    os.environ["AMPLITUDE_API_KEY"] = "local-test-key"
    os.environ["AMPLITUDE_SERVER_URL"] = fake.url
    sys.path.insert(0, str(Path(__file__).parent))
    uvicorn.run("app:app", host="127.0.0.1", port=8000)
    for event in fake.events:
        print(event["event_type"], event.get("user_id"), event.get("event_properties"))
