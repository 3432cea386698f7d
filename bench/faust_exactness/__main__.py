"""``python -m bench.faust_exactness``."""

from bench.faust_exactness.run import main

main()
