"""``python -m opsflow.dev``: the same as ``opsflow dev``."""

import os
import sys

from opsflow.dev.stack import run_dev

code = run_dev()
sys.stdout.flush()
sys.stderr.flush()
# A process that used a Temporal client can abort at interpreter exit (sdk-python#300).
os._exit(code)
