"""``python -m bench``: the same as ``casesync bench``."""

from __future__ import annotations

import sys

from cli.main import main

sys.exit(main(["bench", *sys.argv[1:]]))
