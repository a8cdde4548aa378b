"""The package's layering: no import cycles, and each layer imports only the layers below it
(docs/architecture.md). Function-level (lazy) imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

import crosspatch

PACKAGE = Path(crosspatch.__file__).parent

# layer -> what it may import from the package (besides itself): docs/architecture.md's table
_BELOW_CORE = {"crosspatch.errors", "crosspatch.inputs", "crosspatch.models", "crosspatch.execution"}
ALLOWED = {
    "crosspatch.errors": set(),
    "crosspatch.inputs": {"crosspatch.errors"},
    "crosspatch.models": {"crosspatch.errors"},
    "crosspatch.execution": {"crosspatch.errors", "crosspatch.models"},
    "crosspatch.core": _BELOW_CORE,
    "crosspatch.store": {"crosspatch.errors", "crosspatch.core"},
    "crosspatch.report": {"crosspatch.errors", "crosspatch.core", "crosspatch.store"},
    "crosspatch.analyses": _BELOW_CORE | {"crosspatch.core", "crosspatch.store", "crosspatch.report"},
    "crosspatch.runner": _BELOW_CORE | {"crosspatch.core", "crosspatch.store", "crosspatch.report",
                                        "crosspatch.analyses"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    if not base.startswith("crosspatch"):
        return []
    if node.module is None:  # "from . import x": x may be a submodule
        return [f"{base}.{a.name}" for a in node.names]
    return [base]


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(name, path.name == "__init__.py", node)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("crosspatch")]
            for t in targets:
                while t and t not in modules:  # "from .x import y" where y is a name, not a module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_inside_the_package():
    graph = import_graph()
    # the package's own __init__ re-exports the public API; nothing inside imports it back
    inner = {m: {t for t in deps if t != "crosspatch"} for m, deps in graph.items() if m != "crosspatch"}
    assert _cycles(inner) == []


def test_lower_layers_import_nothing_above_them():
    graph = import_graph()
    bad = []
    for module, deps in graph.items():
        for layer, allowed in ALLOWED.items():
            if module == layer or module.startswith(layer + "."):
                for dep in deps:
                    if not (dep == layer or dep.startswith(layer + ".")
                            or any(dep == a or dep.startswith(a + ".") for a in allowed)):
                        bad.append(f"{module} imports {dep}")
    assert bad == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_execution_layer_compares_residencies():
    """Residency is decided and acted on in execution/ alone (DESIGN 2.1): no analysis, summary,
    report or command branches on it."""
    import re

    pattern = re.compile(r"residency\s*(==|!=|\bin\b|\bnot in\b)|(==|!=)\s*\w*\.?residency\b")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(("execution/", "models/")):
            continue
        for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line.split("#")[0]):
                offenders.append(f"{rel}:{k}: {line.strip()}")
    assert offenders == []


def test_plugins_register_from_one_module_each():
    """Every built-in analysis is one module that registers itself; the registry finds and imports
    them by name only (no import edge back from the registry to an analysis)."""
    from crosspatch.core.registry import builtin_modules, registered

    graph = import_graph()
    assert not any(dep.startswith("crosspatch.analyses") for dep in graph["crosspatch.core.registry"])
    modules = {p.summarize.__module__ for p in registered().values()}
    assert modules <= set(builtin_modules()) | {m for m in modules if not m.startswith("crosspatch")}


def test_every_package_declares_a_literal_all_whose_names_exist():
    import importlib
    import importlib.util

    root = Path(crosspatch.__file__).parent
    packages = sorted(p for p in root.rglob("__init__.py") if "assets" not in p.parts)
    assert len(packages) >= 10
    for init in packages:
        tree = ast.parse(init.read_text())
        assigned = [n.value for n in tree.body if isinstance(n, ast.Assign)
                    and any(getattr(t, "id", None) == "__all__" for t in n.targets)]
        assert len(assigned) == 1 and isinstance(assigned[0], (ast.List, ast.Tuple)), init
        names = [e.value for e in assigned[0].elts]
        assert all(isinstance(x, str) for x in names) and len(set(names)) == len(names), init
        dotted = ".".join(init.relative_to(root.parent).parent.parts)
        package = importlib.import_module(dotted)
        for name in names:  # a name of the package, or one of its modules
            assert hasattr(package, name) or importlib.util.find_spec(f"{dotted}.{name}") is not None, (dotted, name)
    assert sorted(crosspatch.__all__) == sorted(crosspatch._EXPORTS)  # the lazy exports, listed literally


def test_no_module_is_above_400_lines():
    """A module a reader can hold in mind: none of the package's modules is above 400 lines (the
    zoo's generated assets aside)."""
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if "assets" not in p.parts
            and (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}


def _text_io_without_encoding(tree: ast.AST) -> list[int]:
    """Lines of ``tree`` that read or write text in the locale's encoding: ``Path.read_text`` /
    ``write_text``, or ``open`` / ``os.fdopen`` / ``gzip.open`` ... in a text mode, without ``encoding=``."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("read_text", "write_text") and isinstance(func, ast.Attribute):  # (not inputs.text.read_text)
            lines.append(node.lineno)
        elif name in ("open", "fdopen"):
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"),
                                                                None)
            text_mode = mode is None or (isinstance(mode, ast.Constant) and "b" not in str(mode.value))
            if text_mode and not (isinstance(func, ast.Attribute) and getattr(func.value, "id", "") in
                                  ("safe_open", "Image", "tarfile", "zipfile")):
                lines.append(node.lineno)
    return lines


def test_every_text_file_is_read_and_written_as_utf8():
    """Reports, records and configurations are UTF-8 on every machine: no text is read or written
    in the locale's encoding (Windows' cp1252 cannot hold the report's Δ or a model's CJK text; a
    report written in it breaks, a record read in it is garbled)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        lines = _text_io_without_encoding(ast.parse(path.read_text(encoding="utf-8")))
        if lines:
            found[str(path.relative_to(PACKAGE))] = lines
    assert found == {}
