"""The import graph of ``mpsearch``: no module imports itself back, directly or through others, and no
module imports another's private (``_name``) helpers.

The graph is read statically with :mod:`ast`, so it counts every import statement wherever it stands:
at module level, inside functions (the lazy imports that keep TVM out of ``import mpsearch``, or that
dodge a cycle at import time without removing it) and under ``if TYPE_CHECKING:``. An edge goes to the
module an import names (``from mpsearch.a import b`` is ``mpsearch.a.b`` when that is a module, else
``mpsearch.a``); the package ``__init__`` that Python runs first is not counted as an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mpsearch

ROOT = Path(mpsearch.__file__).parent


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``root`` (the package ``package``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the package holding this module, up level - 1 packages
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its source)."""
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported(module, path, node, modules):
                while name and name not in modules:  # an attribute of a module: the module
                    name = name.rpartition(".")[0]
                if name and name != module:
                    deps.add(name)
        graph[module] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one cycle's members."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_mpsearch_has_no_import_cycle() -> None:
    graph = import_graph(ROOT, "mpsearch")
    assert len(graph) > 50 and "mpsearch.hardware.base" in graph["mpsearch.hardware.estimate"]
    found = cycles(graph)
    assert not found, "import cycles (each line: the modules of one cycle):\n" + "\n".join(map(" <-> ".join, found))


def private_imports(root: Path, package: str) -> list[str]:
    """``module: name`` for every ``_private`` name a module imports from another of the package's modules."""
    modules = module_files(root, package)
    out = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == package):
                out += [f"{module}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    return out


def test_no_module_imports_another_modules_private_names() -> None:
    found = private_imports(ROOT, "mpsearch")
    assert not found, "make these public where they are shared, or keep them in their module:\n" + "\n".join(found)


def test_the_graph_sees_lazy_relative_and_attribute_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (pkg / "sub" / "b.py").write_text("from pkg.sub import a\nfrom pkg.c import h\n")
    (pkg / "c.py").write_text("import os\nfrom ..outside import x\n\nh = 1\n")
    graph = import_graph(pkg, "pkg")
    assert graph == {"pkg": set(), "pkg.c": set(), "pkg.sub": {"pkg.sub.a"}, "pkg.sub.a": {"pkg.sub.b"},
                     "pkg.sub.b": {"pkg.sub.a", "pkg.c"}}
    assert cycles(graph) == [["pkg.sub.a", "pkg.sub.b"]]
    (pkg / "sub" / "a.py").write_text("def f():\n    return 1\n")
    assert cycles(import_graph(pkg, "pkg")) == []
    assert private_imports(pkg, "pkg") == []
    (pkg / "c.py").write_text("def h():\n    from pkg.sub.b import _g, __version__\n")
    assert private_imports(pkg, "pkg") == ["pkg.c: pkg.sub.b._g"]
