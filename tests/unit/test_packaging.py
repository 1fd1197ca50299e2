"""Packaging: namespaced imports only, every module shipped, py.typed shipped, src layout."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"


def _pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_folder_of_modules_is_a_package() -> None:
    """Package discovery (pyproject [tool.setuptools.packages.find]) finds every folder of
    modules: each has an ``__init__.py`` (only the ``sarclym`` namespace has none)."""
    folders = {p.parent for p in (SRC / "sarclym").rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(SRC)) for f in folders if not (f / "__init__.py").exists())
    assert missing == []
    assert not (SRC / "sarclym" / "__init__.py").exists()


def test_editable_install_is_one_path_entry_that_static_tools_read() -> None:
    """The checkout's src/ is on the path as a plain folder (a static .pth entry), not behind an
    import hook: mypy, pyright and editors resolve sarclym.node/sarclym.model as Python does."""
    spec = importlib.util.find_spec("sarclym.node")
    assert spec is not None
    assert spec.origin is not None
    assert Path(spec.origin).resolve() == (SRC / "sarclym" / "node" / "__init__.py").resolve()
    import sys

    assert any(Path(p).resolve() == SRC.resolve() for p in sys.path if p), sys.path


def test_no_bare_node_or_model_import() -> None:
    """The installed distribution exposes only the ``sarclym`` top-level name."""
    dist = importlib.metadata.distribution("sarclym-node")
    assert (dist.read_text("top_level.txt") or "").split() == ["sarclym"]
    assert importlib.util.find_spec("sarclym.node") is not None
    assert importlib.util.find_spec("sarclym.model") is not None


def test_typed_markers() -> None:
    assert (SRC / "sarclym" / "node" / "py.typed").exists()
    assert (SRC / "sarclym" / "model" / "py.typed").exists()


def test_torch_range_left_open_for_gpu_users() -> None:
    deps = _pyproject()["project"]["dependencies"]
    torch = [d for d in deps if d.startswith("torch")]
    assert torch == ["torch>=2.2"]


def test_wheel_ships_the_default_model(tmp_path: Path) -> None:
    """A built wheel (not only the editable install) carries the registry with its weights."""
    import subprocess
    import sys
    import zipfile

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("sarclym_node-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    active = (SRC / "sarclym" / "model" / "default_registry" / "ACTIVE").read_text().strip()
    for name in ("ACTIVE", f"{active}/weights.safetensors", f"{active}/model_card.json"):
        assert f"sarclym/model/default_registry/{name}" in names, name
    sources = (SRC / "sarclym").rglob("*.py")
    modules = {str(p.relative_to(SRC)) for p in sources if "__pycache__" not in p.parts}
    assert modules - names == set(), "modules missing from the wheel"


def test_pixel_data_decoders_are_runtime_dependencies() -> None:
    """PACSs forward compressed PET: a plain ``pip install`` must be able to decode it."""
    declared = " ".join(_pyproject()["project"]["dependencies"])
    for name in ("pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pyjpegls"):
        assert f'"{name}>' in f'"{declared.replace(" ", chr(34) + " " + chr(34))}', name
    requires = importlib.metadata.requires("sarclym-node") or []
    unconditional = {r.split(">")[0].split("=")[0].strip() for r in requires if ";" not in r}
    assert {"pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pyjpegls"} <= unconditional
