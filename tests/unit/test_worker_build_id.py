"""The worker's build id names the workflow code it runs, cheaply."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import opsflow
from opsflow.worker.main import build_id


def test_build_id_is_the_version_and_a_digest_of_the_workflow_code(tmp_path: Path) -> None:
    package = Path(opsflow.__file__).parent
    for folder in ("workflows", "shared"):
        shutil.copytree(package / folder, tmp_path / folder)
    first = build_id(tmp_path)
    assert re.fullmatch(rf"opsflow-{re.escape(opsflow.__version__)}\+[0-9a-f]{{12}}", first)
    assert build_id(tmp_path) == first
    assert build_id() == first  # the copy is the installed code

    # A change to a workflow or to a payload dataclass is a new build; other files are not.
    (tmp_path / "notes.txt").write_text("not code")
    assert build_id(tmp_path) == first
    wf = tmp_path / "workflows" / "sla_escalation.py"
    wf.write_text(wf.read_text() + "\n# changed\n")
    second = build_id(tmp_path)
    assert second != first
    shared = tmp_path / "shared" / "common.py"
    shared.write_text(shared.read_text() + "\n# changed\n")
    assert build_id(tmp_path) not in (first, second)
