"""``python -m opsflow.worker``."""

from opsflow.worker.main import main

main()
