"""The layer contract, checked on every import statement of the installed package's sources:

    kernels < nets.blocks < nets < trainers < pipeline (train, predict, plan, compare, ...) < cli
    with report, io, model_folder, metrics beside the pipeline, registry/presets/errors/workspace/checkpoint
    below the trainers, and atomic (standard-library file writing) and cache (where built libraries live) at
    the bottom, usable by the kernels.
    Nothing up to nets imports nnU-Net (nnunetv2): the trainers are where it comes in.

import-linter cannot check this package: its `kernels/` and `cli/` folders are mapped into `medmamba.*`
by setuptools package-dir, which its graph builder does not follow; so the contract is read here with ast
from pyproject.toml's mapping.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python >= 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[2]

# layer of each module prefix (longest prefix wins); a module may import its own layer and lower ones
LAYERS = {
    "medmamba.kernels": 0, "medmamba.atomic": 0, "medmamba.cache": 0,
    "medmamba.errors": 1, "medmamba.registry": 1, "medmamba.presets": 1,
    "medmamba.nets.blocks": 2,
    "medmamba.nets": 3,
    "medmamba.checkpoint": 4, "medmamba.workspace": 4, "medmamba.runtime": 4,
    "medmamba.trainers": 5,
    "medmamba.metrics": 6, "medmamba.io": 6, "medmamba.model_folder": 6, "medmamba.report": 6,
    "medmamba.datasets": 6, "medmamba.plans": 6,
    "medmamba": 7,  # the pipeline modules: train, predict, plan, compare, bundle, benchmark, evaluate, params
    "medmamba.cli": 8,
}


def _modules() -> dict[str, Path]:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-dir"]
    out = {}
    for package, folder in mapping.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if not any(name.startswith(other + ".") for other in mapping if other != package and
                       other.startswith(package + ".") and path.is_relative_to(ROOT / mapping[other])):
                out.setdefault(name, path)
    return out


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _imports(name: str, path: Path) -> list[str]:
    """The medmamba modules `name` imports."""
    return [m for m in _all_imports(name, path) if m == "medmamba" or m.startswith("medmamba.")]


def _all_imports(name: str, path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append(mod)
            found += [f"{mod}.{a.name}" for a in node.names]  # `from medmamba import report` names a module
    return found


MODULES = _modules()

# nn.Modules and kernels know nothing of nnU-Net proper; dynamic_network_architectures (its building blocks,
# a separate package) would be allowed in nets, as it holds no training or planning
NNUNET_FREE = layer("medmamba.nets")


def test_the_mapping_finds_every_layer():
    assert {"medmamba.kernels.cpu", "medmamba.cli.main", "medmamba.nets.blocks.mamba", "medmamba.trainers.base",
            "medmamba.train"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_its_own_or_lower_layers(module):
    own = layer(module)
    upward = [m for m in _imports(module, MODULES[module]) if m in MODULES or m == "medmamba"
              if layer(m) > own and not (m == "medmamba" and own >= 5)]
    assert not upward, f"{module} (layer {own}) imports upward: {upward}"


def test_an_upward_import_is_caught(tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text("from ..trainers.base import make_trainer\nimport medmamba.cli.main\nfrom . import blocks\n",
        encoding="utf-8")
    found = _imports("medmamba.nets.fake", fake)
    assert "medmamba.trainers.base" in found and "medmamba.cli.main" in found and "medmamba.nets.blocks" in found
    assert [m for m in found if layer(m) > layer("medmamba.nets.fake")] == [
        "medmamba.trainers.base", "medmamba.trainers.base.make_trainer", "medmamba.cli.main"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) <= NNUNET_FREE))
def test_layers_up_to_nets_do_not_import_nnunet(module):
    found = [m for m in _all_imports(module, MODULES[module]) if m.split(".")[0] == "nnunetv2"]
    assert not found, f"{module} imports nnU-Net: {found}"


def test_an_nnunet_import_in_nets_is_caught(tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text("import dynamic_network_architectures.building_blocks.residual\n"
                    "from nnunetv2.utilities.plans_handling.plans_handler import PlansManager\n", encoding="utf-8")
    found = [m for m in _all_imports("medmamba.nets.fake", fake) if m.split(".")[0] == "nnunetv2"]
    assert found == ["nnunetv2.utilities.plans_handling.plans_handler",
                     "nnunetv2.utilities.plans_handling.plans_handler.PlansManager"]
