"""``python -m opsflow``: the same as the ``opsflow`` command."""

from opsflow.cli.main import app

if __name__ == "__main__":
    app(prog_name="opsflow")
