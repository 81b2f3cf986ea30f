"""The package's tiers import only downward, and no two modules import each other.

The import graph is built from the source (``ast``), counting imports inside
functions too, so a cycle cannot hide behind a late import. The tiers, lowest
first, are the folders of ``bnrepro/`` (README, "How the code is organised"):
a module may import its own tier and the tiers below it, never one above.
Within a tier the graph must have no cycle. A registry (``bnrepro.experiments``)
may import its members at run time (``importlib``); its members import only
downward.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "bnrepro"
#: The tiers, lowest first. A module belongs to the first tier whose prefix it has.
TIERS = [
    ("core", ("bnrepro.core",)),
    ("nn", ("bnrepro.nn",)),
    ("data", ("bnrepro.data",)),
    ("models", ("bnrepro.models",)),
    ("training", ("bnrepro.training",)),
    ("distributed", ("bnrepro.distributed",)),
    ("measure", ("bnrepro.measure",)),
    ("experiments", ("bnrepro.experiments",)),
    ("runner", ("bnrepro.runner",)),
    ("chapters", ("bnrepro.chapters",)),
    ("top", ("bnrepro.scorecard", "bnrepro.gpu", "bnrepro.cli", "bnrepro.__main__", "bnrepro")),
]


def tier_of(module: str) -> int:
    for i, (_, prefixes) in enumerate(TIERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no tier: add its folder to TIERS and to the README")


def modules(package: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__)."""
    out = {}
    for f in sorted(package.rglob("*.py")):
        parts = list(f.relative_to(package.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source (functions included)."""
    mods = modules(package)
    root = package.name
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # `from pkg import submodule` imports the submodule
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
            else:
                continue
            for t in targets:
                if t == root or t.startswith(root + "."):
                    while t not in mods:  # `import bnrepro.x.y.Name`-style: the module part
                        t = t.rsplit(".", 1)[0]
                    if t != name:
                        deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} ({TIERS[tier_of(m)][0]}) imports {d} ({TIERS[tier_of(d)][0]})"
                  for m, deps in graph.items() for d in deps if tier_of(d) > tier_of(m))


def test_every_module_is_in_a_tier():
    for name in modules():
        tier_of(name)


def test_no_import_goes_up_a_tier():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_module_imports_the_top_package():
    """``bnrepro/__init__.py`` gathers the public names from every tier; a module that
    imports it (``from bnrepro import X``, ``from .. import X``) imports everything."""
    graph = import_graph()
    assert sorted(m for m, deps in graph.items() if "bnrepro" in deps and m != "bnrepro.__main__") == []


def test_modules_hold_one_concern_each():
    long = {name: n for name, (path, _) in modules().items()
            if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}, "split these by concern (not across a cycle)"


def test_the_check_sees_cycles_upward_imports_and_late_imports(tmp_path):
    """A test that cannot fail proves nothing: a small package with each fault."""
    pkg = tmp_path / "bnrepro"
    for sub in ("core", "nn"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from ..nn import b  # late, and upward\n")
    (pkg / "nn" / "b.py").write_text("from . import c\n")
    (pkg / "nn" / "c.py").write_text("import bnrepro.nn.b\n")
    graph = import_graph(pkg)
    assert graph["bnrepro.core.a"] == {"bnrepro.nn.b"}
    assert upward_imports(graph) == ["bnrepro.core.a (core) imports bnrepro.nn.b (nn)"]
    assert cycles(graph) == [["bnrepro.nn.b", "bnrepro.nn.c"]]


def test_the_public_face():
    """``import bnrepro`` gives the names a user reaches for, each importable and listed in __all__."""
    import bnrepro

    for name in ("BatchNorm", "convert_batchnorm", "GhostBatchNorm", "SyncBatchNorm", "train_only_bn",
                 "path_depth_distribution", "load_or_run", "run_sweep", "train", "load_dataset"):
        assert name in bnrepro.__all__ and getattr(bnrepro, name) is not None, name
    assert sorted(bnrepro.__all__) == sorted(set(bnrepro.__all__))
