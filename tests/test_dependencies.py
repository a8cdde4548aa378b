"""The declared dependencies are exactly what the package imports: every third-party module
crosspatch imports is declared (in the dependencies, or in the extra that needs it), and every
declared dependency is imported somewhere (or is a documented runtime-only need)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

import crosspatch

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).parents[1]
PACKAGE = Path(crosspatch.__file__).parent
IMPORT_TO_DIST = {"PIL": "pillow", "yaml": "pyyaml", "huggingface_hub": "huggingface_hub",
                  "markdown_it": "markdown_it_py", "markupsafe": "markupsafe"}
RUNTIME_ONLY = {"pyarrow", "accelerate"}  # pandas writes Parquet through pyarrow; transformers places device maps with accelerate
OPTIONAL = {"ray": "ray", "trl": "zoo", "datasets": "zoo", "mergekit": "merge"}
VIA = {"markupsafe": "jinja2", "typing_extensions": "pydantic"}  # installed by the declared dependency named here  # imported only where the extra is needed


def _dist(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("-", "_")


def _imported() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("crosspatch", "__future__")}


def test_declared_dependencies_match_the_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_dist(r) for r in project["dependencies"]}
    extras = {name: {_dist(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    imported = {IMPORT_TO_DIST.get(n, n).lower() for n in _imported()}
    for module in imported:
        extra = OPTIONAL.get(module)
        assert module in core or VIA.get(module) in core or (extra is not None and module in extras[extra]), \
            f"{module} is imported but not declared"
    assert core - imported - RUNTIME_ONLY == set(), "declared but never imported"
    assert "ray" in extras["ray"] and all("ray" not in reqs for name, reqs in extras.items() if name != "ray")
