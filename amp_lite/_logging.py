"""The `amp_lite` logger: silent by default (NullHandler), AMP_LITE_LOG_LEVEL turns it on."""

from __future__ import annotations

import logging
import os
import sys

ENV_LOG_LEVEL = "AMP_LITE_LOG_LEVEL"


def configure_logger() -> logging.Logger:
    """AMP_LITE_LOG_LEVEL=INFO: one summary line per flush; DEBUG: one line per request."""
    logger = logging.getLogger("amp_lite")
    logger.addHandler(logging.NullHandler())
    level = os.environ.get(ENV_LOG_LEVEL, "").strip().upper()
    if not level:
        return logger
    if not isinstance(logging.getLevelName(level), int):
        sys.stderr.write(f"amp_lite: {ENV_LOG_LEVEL}={level!r} is not a logging level\n")
        return logger
    logger.setLevel(level)
    if not logging.getLogger().handlers:  # Lambda's runtime has a root handler; a script may not
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger
