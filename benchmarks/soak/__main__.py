"""``python -m benchmarks.soak``: see :mod:`benchmarks.soak`."""

from benchmarks.soak.run import main

main()
