"""@amplitude_flush stacks with Powertools' Logger, Metrics and Tracer decorators, either order."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from amp_lite import Amplitude, amplitude_flush
from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY
from tests.support.doubles import LambdaContext

log_lines = io.StringIO()
logger = Logger(service="amp-test", logger_handler=logging.StreamHandler(log_lines))
metrics = Metrics(namespace="AmpTest", service="amp-test")
tracer = Tracer(service="amp-test", disabled=True)


def _handlers(client: Amplitude) -> dict[str, Any]:
    def body(event: dict[str, Any], context: Any) -> dict[str, Any]:
        """Order handler."""
        metrics.add_metric(name="Orders", unit=MetricUnit.Count, value=1)
        logger.info("order handled")
        client.track("Order", user_id="user-stack", event_properties={"n": event["n"]})
        if event.get("fail"):
            raise ValueError("stacked failure")
        return {"n": event["n"]}

    ours_outside = amplitude_flush(client)(
        logger.inject_lambda_context(metrics.log_metrics(tracer.capture_lambda_handler(body))))
    ours_inside = logger.inject_lambda_context(
        metrics.log_metrics(tracer.capture_lambda_handler(amplitude_flush(client)(body))))
    return {"amp_lite outermost": ours_outside, "amp_lite innermost": ours_inside}


@pytest.mark.parametrize("order", ["amp_lite outermost", "amp_lite innermost"])
def test_stacks_with_powertools_in_either_order(fake: FakeAmplitude, order: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the same handler under Powertools' three decorators and ours, in one order
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())
    handler = _handlers(client)[order]
    # WHEN it runs once successfully and once raising
    assert handler({"n": 1}, LambdaContext(3000)) == {"n": 1}
    with pytest.raises(ValueError, match="stacked failure"):
        handler({"n": 2, "fail": True}, LambdaContext(3000))
    # THEN both events were flushed, the name survived, and Powertools still did its part
    assert [e["event_properties"]["n"] for e in fake.events] == [1, 2]
    assert handler.__name__ == "body"
    assert '"Orders"' in capsys.readouterr().out  # the EMF blob that log_metrics printed
    # the Logger's line carries the request id that inject_lambda_context took from the context
    assert '"function_request_id":"00000000-1111-2222-3333-444444444444"' in (
        log_lines.getvalue().replace(" ", ""))
