"""The import graph goes down the layers and has no circle (imports inside functions included).

Layers, bottom to top (DESIGN §9): models → base → pipelines → data → tasks → engine → runs →
study (and doctor) → cli. ``base`` holds the stdlib-only leaf modules that every layer may read:
``dalivssl.errors``, ``console``, ``results``, ``plots``, ``devices`` and the decoder table
``data.capabilities`` (a leaf table: ``decode_matrix``, ``check`` and ``devices`` read it, never the
reverse). ``config`` (typed run configs) and ``record`` (run records, which name the tasks) sit on
the engine layer. ``models/`` imports nothing from ``dalivssl``; ``pipelines/`` imports neither
``dalivssl.cli`` nor the task registries.
"""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("dalivssl", "pipelines", "models")
LAYERS = [  # most specific prefix wins
    ("models", 0),
    ("dalivssl.errors", 1), ("dalivssl.console", 1), ("dalivssl.results", 1),
    ("dalivssl.plots", 1),
    ("dalivssl.devices", 1), ("dalivssl.data.capabilities", 1), ("dalivssl", 1),
    ("pipelines", 2),
    ("dalivssl.data", 3),
    ("dalivssl.tasks", 4),
    ("dalivssl.engine", 5), ("dalivssl.config", 5), ("dalivssl.record", 5),
    ("dalivssl.runs", 6),
    ("dalivssl.study", 7), ("dalivssl.doctor", 7),
    ("dalivssl.cli", 8), ("dalivssl.__main__", 8),
]
# Edges still waiting for their fix, each with who removes it. Empty is the goal.
ALLOWED: set[tuple[str, str]] = set()


def layer(mod: str) -> int:
    best = max((p for p, _ in LAYERS if mod == p or mod.startswith(p + ".")), key=len)
    return dict(LAYERS)[best]


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: modules of this repository it imports anywhere in its body}."""
    mods = modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for a in node.names:  # `from pkg import submodule` imports the submodule
                    targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
        graph[name] = {t for t in map(known, targets) if t and t != name}
    return graph


def test_no_import_goes_up_a_layer():
    up = sorted((a, b) for a, bs in import_graph().items() for b in bs
                if layer(b) > layer(a) and (a, b) not in ALLOWED)
    assert not up, "imports up the layers:\n" + "\n".join(f"  {a} -> {b}" for a, b in up)


def test_models_import_nothing_from_dalivssl_and_pipelines_no_cli_or_tasks():
    bad = sorted((a, b) for a, bs in import_graph().items() for b in bs
                 if (a.startswith("models") and b.startswith("dalivssl"))
                 or (a.startswith("pipelines") and b.startswith(("dalivssl.cli", "dalivssl.tasks")))
                 if (a, b) not in ALLOWED)
    assert not bad, "\n".join(f"  {a} -> {b}" for a, b in bad)


def test_no_import_circle():
    graph = import_graph()
    # a package's __init__ importing its own submodules (registries) is not a circle back
    edges = {a: {b for b in bs if (a, b) not in ALLOWED and not a.startswith(b + ".")}
             for a, bs in graph.items()}
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v), on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w), comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    msg = [" + ".join(sorted(c)) + ":\n" + "\n".join(
        f"    {a} -> {b}" for a in sorted(c) for b in sorted(edges[a] & c)) for c in sccs]
    assert not sccs, "import circles:\n  " + "\n  ".join(msg)


def test_no_edge_is_waiting_for_a_fix():
    """Every layering exception is gone (issue 23): new code gets none."""
    assert ALLOWED == set()
