"""Packaging: namespaced imports only, every sub-package listed, py.typed shipped."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed() -> None:
    tool = _pyproject()["tool"]["setuptools"]
    mapping = tool["package-dir"]
    listed = set(tool["packages"])
    found = set()
    for name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found == listed, "pyproject [tool.setuptools] packages is out of date"


def test_no_bare_node_or_model_import() -> None:
    """The installed distribution exposes only the ``sarclym`` top-level name."""
    dist = importlib.metadata.distribution("sarclym-node")
    assert (dist.read_text("top_level.txt") or "").split() == ["sarclym"]
    assert importlib.util.find_spec("sarclym.node") is not None
    assert importlib.util.find_spec("sarclym.model") is not None


def test_typed_markers() -> None:
    assert (ROOT / "node" / "py.typed").exists()
    assert (ROOT / "model" / "py.typed").exists()


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
    active = (ROOT / "model" / "default_registry" / "ACTIVE").read_text().strip()
    for name in ("ACTIVE", f"{active}/weights.safetensors", f"{active}/model_card.json"):
        assert f"sarclym/model/default_registry/{name}" in names, name


def test_pixel_data_decoders_are_runtime_dependencies() -> None:
    """PACSs forward compressed PET: a plain ``pip install`` must be able to decode it."""
    declared = " ".join(_pyproject()["project"]["dependencies"])
    for name in ("pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pyjpegls"):
        assert f'"{name}>' in f'"{declared.replace(" ", chr(34) + " " + chr(34))}', name
    requires = importlib.metadata.requires("sarclym-node") or []
    unconditional = {r.split(">")[0].split("=")[0].strip() for r in requires if ";" not in r}
    assert {"pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pyjpegls"} <= unconditional
