"""``python -m engine`` runs the `mmrec` command line."""

from engine.cli import main

main()
