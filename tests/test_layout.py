"""The package layout (docs/architecture.md): the top level holds only the public entry points,
every module that moved keeps its old import path for one release, and that path is the same
module object (so patching either patches both), announced with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import crosspatch

PACKAGE = Path(crosspatch.__file__).parent
TOP_LEVEL_MODULES = {"__init__.py", "__main__.py", "errors.py"}
PACKAGES = {"analyses", "cli", "core", "execution", "inputs", "models", "report", "runner", "store", "testing",
            "workflows", "zoo"}


def test_the_top_level_holds_only_the_entry_points_and_the_packages():
    modules = {p.name for p in PACKAGE.glob("*.py")}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert modules == TOP_LEVEL_MODULES
    assert packages == PACKAGES


@pytest.mark.parametrize("old", sorted(crosspatch.MOVED_MODULES))
def test_an_old_import_path_is_the_moved_module_with_a_warning(old):
    new = importlib.import_module(f"crosspatch.{crosspatch.MOVED_MODULES[old]}")
    sys.modules.pop(f"crosspatch.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"crosspatch.{old} moved to {new.__name__}"):
        aliased = importlib.import_module(f"crosspatch.{old}")
    assert aliased is new


def test_a_submodule_of_a_moved_package_keeps_its_old_path_too():
    sys.modules.pop("crosspatch.features.study", None)
    with pytest.warns(DeprecationWarning):
        from crosspatch.features.study import FeatureStudy
    assert FeatureStudy.__module__ == "crosspatch.analyses.features.study"


def test_no_old_path_is_still_a_file():
    for old in crosspatch.MOVED_MODULES:
        path = PACKAGE.joinpath(*old.split("."))
        assert not path.with_suffix(".py").exists() and not path.is_dir(), old
