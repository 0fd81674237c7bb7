"""``python -m mobilenet_v1 ...`` (what torchrun launches)."""

import sys

from .cli import main

sys.exit(main())
