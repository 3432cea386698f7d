"""``python -m bench.faust_exactness`` (needs the optional extra: ``pip install -e '.[faust]'``)."""

import importlib.util
import sys

if importlib.util.find_spec("faust") is None:
    sys.exit("bench.faust_exactness needs faust-streaming: pip install -e '.[faust]'")

from bench.faust_exactness.run import main

main()
