"""``python -m indexers CATALOG --data-dir DIR``: the bulk indexing job (same as `mmrec index`)."""

import sys

from engine.cli import app

app(["index", *sys.argv[1:]])
