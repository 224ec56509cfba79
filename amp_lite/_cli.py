"""The `amp-lite` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._version import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="amp-lite", description=__doc__)
    parser.add_argument("--version", action="version", version=f"amp-lite {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="simulated invocations against a local FakeAmplitude "
                        "(or the real API when AMPLITUDE_API_KEY is set)")
    replay = commands.add_parser(
        "replay", help="drain an overflow queue (or its dead-letter queue) into Amplitude",
        description="Replays amp-lite overflow messages from SQS with the API key in "
                    "AMPLITUDE_API_KEY (or AMPLITUDE_API_KEY_SECRET / _PARAMETER). Messages "
                    "that settle are deleted; the others stay on the queue.")
    replay.add_argument("--queue-url", required=True, help="the SQS queue URL")
    replay.add_argument("--max-messages", type=_positive, default=None,
                        help="stop after this many messages (default: until the queue is empty)")
    replay.add_argument("--dry-run", action="store_true",
                        help="read and count only: send nothing, delete nothing")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo
        return run_demo(sys.stdout)
    if args.command == "replay":
        return _replay(args)
    return 2  # pragma: no cover - argparse enforces the choices


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _replay(args: argparse.Namespace) -> int:
    import time

    from ._client import Amplitude
    from ._errors import ConfigError
    from ._key_sources import api_key_from_environment
    from ._replay_command import replay_queue

    try:
        import boto3
    except ImportError:
        sys.stderr.write("amp-lite replay needs boto3: pip install 'amp-lite[sqs]'\n")
        return 2
    started = time.monotonic()
    try:
        summary = replay_queue(
            args.queue_url, sqs=boto3.client("sqs"),
            client_factory=lambda: Amplitude(api_key=api_key_from_environment(), overflow=()),
            max_messages=args.max_messages, dry_run=args.dry_run, progress=sys.stderr)
    except ConfigError as exc:
        sys.stderr.write(f"amp-lite replay: {exc}\n")
        return 2
    mode = "dry run, nothing sent" if args.dry_run else "done"
    sys.stdout.write(f"amp-lite replay {mode} in {time.monotonic() - started:.1f} s: "
                     f"{summary.line()}\n")
    return 0 if summary.left == 0 or args.dry_run else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
