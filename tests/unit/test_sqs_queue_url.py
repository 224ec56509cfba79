"""SQSOverflow refuses at construction anything that is not a queue URL (issue 12, item 5).

A queue ARN, a bare queue name or a URL without its /<account-id>/<queue-name> path would
only fail at the first overflow, deep in an outage; the error must say what is wrong and
show the expected form.
"""

from __future__ import annotations

import pytest

from amp_lite import ConfigError
from amp_lite.overflow import SQSOverflow

EXPECTED_FORM = "https://sqs.<region>.amazonaws.com/<account-id>/<queue-name>"

REFUSED = {
    "arn": "arn:aws:sqs:us-east-1:123456789012:amp-lite-overflow",
    "empty": "",
    "no scheme": "sqs.us-east-1.amazonaws.com/1/q",
    "no scheme, full path": "sqs.us-east-1.amazonaws.com/123456789012/q",
    "queue name only": "amp-lite-overflow",
    "endpoint only": "https://sqs.us-east-1.amazonaws.com",
    "endpoint with slash": "https://sqs.us-east-1.amazonaws.com/",
    "account only": "https://sqs.us-east-1.amazonaws.com/123456789012",
    "account not 12 digits": "https://sqs.us-east-1.amazonaws.com/1234/q",
    "extra path": "https://sqs.us-east-1.amazonaws.com/123456789012/q/extra",
    "no host": "https:///123456789012/q",
    "other scheme": "sqs://sqs.us-east-1.amazonaws.com/123456789012/q",
    "query string": "https://sqs.us-east-1.amazonaws.com/123456789012/q?Action=SendMessage",
    "bad queue name": "https://sqs.us-east-1.amazonaws.com/123456789012/my queue",
    "whitespace": " https://sqs.us-east-1.amazonaws.com/123456789012/q",
}

ACCEPTED = [
    "https://sqs.us-east-1.amazonaws.com/123456789012/amp-lite-overflow",
    "https://sqs.eu-west-1.amazonaws.com/123456789012/overflow_2",
    "https://sqs.us-east-1.amazonaws.com/123456789012/orders.fifo",
    "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q",
    "https://queue.amazonaws.com/123456789012/legacy",
    "https://vpce-0a1b2c3d-4e5f6a7b.sqs.us-east-1.vpce.amazonaws.com/123456789012/q",
    "http://127.0.0.1:5000/123456789012/amp-lite-overflow",  # moto in server mode
    "http://localhost:4566/000000000000/amp-lite-overflow",  # LocalStack
    "https://sqs.us-east-1.amazonaws.com/123456789012/" + "q" * 80,
]


@pytest.mark.parametrize("url", list(REFUSED.values()), ids=list(REFUSED))
def test_anything_but_a_queue_url_is_refused_naming_the_expected_form(url: str) -> None:
    # WHEN an SQSOverflow is built on it
    with pytest.raises(ConfigError) as caught:
        SQSOverflow(url)
    # THEN the message says it is the queue URL, and shows the expected form
    message = str(caught.value)
    assert message.startswith("SQSOverflow queue_url: ")
    assert EXPECTED_FORM in message
    assert "/<account-id>/<queue-name>" in message


def test_an_arn_is_named_as_an_arn() -> None:
    with pytest.raises(ConfigError, match=r"an ARN, not a queue URL"):
        SQSOverflow("arn:aws:sqs:us-east-1:123456789012:amp-lite-overflow")


def test_a_url_without_scheme_is_told_so() -> None:
    with pytest.raises(ConfigError, match=r"https://"):
        SQSOverflow("sqs.us-east-1.amazonaws.com/1/q")


@pytest.mark.parametrize("url", [None, 42, b"https://sqs.us-east-1.amazonaws.com/1/q"])
def test_a_queue_url_that_is_not_a_string_is_refused(url: object) -> None:
    with pytest.raises(ConfigError, match=r"^SQSOverflow queue_url: "):
        SQSOverflow(url)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ACCEPTED)
def test_queue_urls_are_accepted(url: str) -> None:
    # WHEN an SQSOverflow is built on a real queue URL, or an emulator's
    sink = SQSOverflow(url)
    # THEN it keeps it as given (nothing is contacted at construction)
    assert sink.queue_url == url
