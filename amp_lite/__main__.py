"""`python -m amp_lite`: the `amp-lite` command."""

import sys

from ._cli import main

sys.exit(main())
