"""``python -m indexers CATALOG --data-dir DIR``: the bulk indexing job (same as `mmrec index`)."""

from indexers.command import main

main()
