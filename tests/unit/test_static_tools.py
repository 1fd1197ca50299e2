"""Static tools see the real package: an editor's language server resolves ``sarclym.*`` from the
checkout through the virtualenv's editable install (src layout, one static path entry).

mypy's side is ``./dev.sh mypy`` itself (pyproject ``[tool.mypy]``), run by ``./dev.sh test``.
Here basedpyright (pyright's command line, the engine of VS Code's Pylance and of most editors'
Python language servers) is pointed at this interpreter, as an editor that selected ``.venv``
is, and must resolve every module of the project, and must still flag a module that does not
exist (so the check can fail).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def _modules() -> list[str]:
    names = []
    for path in sorted((SRC / "sarclym").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if "__pycache__" not in parts:
            names.append(".".join(parts))
    return names


def _pyright() -> str:
    exe = shutil.which("basedpyright", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("basedpyright is not installed (pip install -e '.[test]')")
    return exe


def test_language_server_resolves_every_module_from_the_checkout(tmp_path: Path) -> None:
    modules = _modules()
    assert "sarclym.node.dicom.listener" in modules
    assert "sarclym.model.imaging.prepare" in modules
    probe = tmp_path / "probe.py"
    probe.write_text(
        "".join(f"import {m}\n" for m in modules) + "import sarclym.node.no_such_module\n"
    )
    proc = subprocess.run(
        [_pyright(), "--pythonpath", sys.executable, "--outputjson", str(probe)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # no project configuration: only the interpreter's own search path
    )
    report = json.loads(proc.stdout)
    unresolved = sorted(
        d["message"]
        for d in report["generalDiagnostics"]
        if d.get("rule") in ("reportMissingImports", "reportMissingModuleSource")
    )
    assert unresolved == ['Import "sarclym.node.no_such_module" could not be resolved']
