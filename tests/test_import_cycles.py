"""No import cycle among the package's modules (issue 23, item 4), counting imports inside functions
and under TYPE_CHECKING: each module's imports are read with ``ast``, not by importing it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str, folder: Path) -> dict[str, Path]:
    out = {}
    for f in folder.rglob("*.py"):
        parts = (package, *f.relative_to(folder).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph(package: str = "rppg_prep", folder: Path = REPO_ROOT / "rppg_prep") -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports anywhere in its source."""
    mods = _modules(package, folder)

    def owner(name: str) -> str | None:  # `from a.b import c` imports a.b.c when that is a module, else a.b
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        here = name if f.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {owner(a.name) for a in node.names if a.name.split(".")[0] == package}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                if base.split(".")[0] == package:
                    deps |= {owner(f"{base}.{a.name}") for a in node.names}
        if name == f"{package}.stages":  # the registry imports its stage modules by name (importlib)
            registry = next(n.value for n in tree.body if isinstance(n, ast.Assign)
                            and any(getattr(t, "id", "") == "MODULES" for t in n.targets))
            deps |= {f"{package}.stages.{m}" for m in ast.literal_eval(registry)}
        graph[name] = {d for d in deps if d and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "rppg_prep.stages.labels" in graph["rppg_prep.stages"], "the registry's modules must be edges"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n")
    (pkg / "c.py").write_text("def g():\n    from . import a\n")
    graph = import_graph("pkg", pkg)
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph("pkg", pkg)) is None


def test_the_store_imports_only_leaves():
    graph = import_graph()
    assert graph["rppg_prep.integrity"] == set()
    assert graph["rppg_prep.faults"] == set()
    assert graph["rppg_prep.store"] <= {"rppg_prep.errors", "rppg_prep.integrity", "rppg_prep.faults"}
