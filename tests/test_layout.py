"""Tests of the package layout: every module of openface_py, ARCHITECTURE.md.

The package reads like the pipeline, and imports run one way: no module imports a layer above it
(function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "openface_py"

#: Layers from the bottom up; a module may import its own layer and the ones below.
LAYERS = [
    {"errors", "registry", "device"},
    {"io", "metrics"},
    {"store"},
    {"faces"},
    {"nets"},
    {"pipeline"},
    {"recognize"},
    {"jobs"},
    {"eval"},
    {"train"},
    {"service"},
    {"cli", "__main__"},
]


def layer_of(dotted: str) -> int:
    top = dotted.split(".")[1] if dotted.startswith("openface_py.") else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{dotted}: not in any layer (add it to ARCHITECTURE.md and LAYERS)")


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        if name != "openface_py":
            yield name, path


def imported(path: Path, name: str):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("openface_py."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "openface_py":
                for a in node.names:
                    if a.name != "__version__":
                        yield f"openface_py.{a.name}"
            elif node.module.startswith("openface_py."):
                yield node.module


def test_imports_run_one_way():
    wrong = []
    for name, path in modules():
        mine = layer_of(name)
        for dep in imported(path, name):
            if layer_of(dep) > mine:
                wrong.append(f"{name} imports {dep}")
    assert not wrong, "\n".join(wrong)


def test_stage_packages_and_architecture_agree():
    arch = (ROOT / "ARCHITECTURE.md").read_text()
    for name, path in modules():
        if path.name == "__init__.py" or name.endswith("__main__"):
            continue
        shown = path.relative_to(PKG).as_posix()
        assert f"`{shown}`" in arch, f"ARCHITECTURE.md does not place {shown}"
    tops = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert tops == {"faces", "nets", "recognize", "jobs", "eval", "train", "service", "cli"}
