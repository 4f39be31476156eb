"""Layers point one way: data -> cache -> extract / fuse -> cli. A lower layer never imports a higher one."""

import ast
from pathlib import Path

import pytest

from mer.cache.spec import FeatureSpec

MER = Path(__file__).resolve().parents[1] / "mer"
HIGHER = {"data": ("mer.cache", "mer.extract", "mer.fuse", "mer.cli", "mer.predict"),
          "cache": ("mer.extract", "mer.fuse", "mer.cli", "mer.predict")}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(HIGHER))
def test_lower_layers_import_nothing_above_them(layer):
    offenders = [f"{path.relative_to(MER)}: {module}"
                 for path in sorted((MER / layer).rglob("*.py"))
                 for module in imported_modules(path) if module.startswith(HIGHER[layer])]
    assert not offenders


def test_spec_from_a_newer_version_reads_and_names_the_keys_it_ignores():
    spec = FeatureSpec("toy", "audio", "frame", 4, frame_rate=100.0)
    stored = {**spec.to_dict(), "quantisation": "int8"}
    read = FeatureSpec.from_dict(stored)
    assert read == spec and read.config_hash == spec.config_hash
    assert read.ignored_keys == ("quantisation",)
    assert "ignored_keys" not in read.to_dict()
