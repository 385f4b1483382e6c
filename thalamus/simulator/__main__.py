"""``python -m thalamus.simulator``: the same as ``casesync simulator``."""

from __future__ import annotations

import sys

from cli.main import main

sys.exit(main(["simulator", *sys.argv[1:]]))
