"""The package's import graph, read from the source (every import, those inside functions included): no cycle,
and the paper's network (``model``, ``layers``, ``spec``, ``cost``) reaches no training, kernel, deployment or
conversion module, so it can be read, imported and reused alone."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mobilenet_v1"
THE_NETWORK = ("model", "layers", "spec", "cost")
NOT_THE_NETWORK = ("kernels", "train", "train_config", "finetune", "deploy", "convert", "bench", "cli", "distributed")


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        names[".".join(p for p in parts if p != "__init__")] = path
    return names


def graph() -> dict[str, set[str]]:
    """module → the package modules it imports ("" is the package itself)."""
    modules = module_names()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if name else []
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name.removeprefix("mobilenet_v1").lstrip(".") for a in node.names
                           if a.name == "mobilenet_v1" or a.name.startswith("mobilenet_v1.")]  # fmt: skip
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here if is_package else here[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join([*base, *(node.module.split(".") if node.module else [])])
                elif node.module and (node.module == "mobilenet_v1" or node.module.startswith("mobilenet_v1.")):
                    stem = node.module.removeprefix("mobilenet_v1").lstrip(".")
                else:
                    continue
                for alias in node.names:  # `from . import x` imports the submodule x where there is one
                    sub = f"{stem}.{alias.name}" if stem else alias.name
                    targets.append(sub if sub in modules else stem)
            for target in targets:
                while target not in modules:  # a.b.c → the nearest enclosing module that exists
                    target = target.rpartition(".")[0]
                if target != name:
                    edges[name].add(target)
                # importing a.b runs a's __init__ first
                parent = target.rpartition(".")[0] if target else None
                while parent is not None:
                    if parent != name and parent in modules and not name.startswith(parent + ".") and parent != "":
                        edges[name].add(parent)
                    parent = parent.rpartition(".")[0] if parent else None
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def reach(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in edges[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_the_graph_is_read_from_the_source():
    edges = graph()
    assert "model" in edges and "layers" in edges["model"]  # a known edge, so an empty graph cannot pass
    assert any(name.startswith("kernels.") for name in edges)


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_network_reaches_nothing_else():
    edges = graph()
    for name in THE_NETWORK:
        bad = sorted(m for m in reach(edges, name) if m.split(".")[0] in NOT_THE_NETWORK)
        assert not bad, f"{name} reaches {bad}"
