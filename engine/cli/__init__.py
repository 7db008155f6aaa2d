"""The `mmrec` command line: serve, index, train-seq, search, info and the demo.

The only engine code that imports ``indexers`` (the bulk jobs); the commands
talk to a running service through :mod:`engine.client`.
"""

from engine.cli.commands import app, main

__all__ = ["app", "main"]
