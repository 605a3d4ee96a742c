"""The rooms of python/inferline import only rooms below them, and no module imports itself back.

The levels follow ../shared/DESIGN.md: the binding and the error classes at the bottom; config;
backends; the engine facade and registry storage; model lifecycle and routing policy over them;
the server over those; the CLI on top. Every import counts, also those inside functions.
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "python", "inferline")

LEVELS = {
    "_core": 0, "errors": 0, "demo_models": 0,
    "config": 1,
    "backends": 2,
    "engine": 3, "registry": 3,
    "models": 4, "routing": 4, "demo": 4,
    "observability": 5, "rollout": 5, "inferlog": 5,
    "service": 6,
    "ray": 6.5,  # pools on a Ray cluster (`inferline ray`); the gateway (server/gateway) reads their directory
    "server": 7,
    "loadgen": 7.5,  # a client of the server's wire format (server.proto); used by the CLI's `bench`
    "report": 7.5,  # a client of the server's outputs (metrics text, Prometheus, log files): `stats`, `report`
    "cli": 8, "__main__": 9,
}


def modules():
    """{dotted module name: path} of every module of the package."""
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(["inferline", *rel])] = os.path.join(dirpath, f)
    out["inferline._core"] = None  # the compiled binding: imports nothing of the package
    return out


def imports_of(name: str, path: str, known: set) -> set:
    """The package modules that module `name` imports (a name imported from a package counts as
    that submodule when there is one)."""
    is_package = path.endswith("__init__.py")
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("inferline"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("inferline"):
                target = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else (f"inferline:{alias.name}" if target == "inferline" else target))
    return {m for m in found if (m in known or m.startswith("inferline:")) and m != name}


def source(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def room(module: str) -> str:
    parts = module.split(":")[0].split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH = {}
_known = modules()
for _name, _path in _known.items():
    GRAPH[_name] = imports_of(_name, _path, set(_known)) if _path else set()


def test_every_room_has_a_level():
    rooms = {room(m) for m in GRAPH} - {""}
    assert rooms <= set(LEVELS), f"rooms without a level in this test: {rooms - set(LEVELS)}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if room(m)))
def test_no_import_reaches_up(module):
    mine = LEVELS[room(module)]
    upward = sorted(t for t in GRAPH[module]
                    if room(t) and room(t) != room(module) and LEVELS[room(t)] >= mine)
    assert not upward, f"{module} (level {mine}) imports {upward}"
    # The package root is the public facade over everything: below the CLI only its version may be used.
    from_root = sorted(t for t in GRAPH[module] if t == "inferline" or t.startswith("inferline:"))
    assert mine >= LEVELS["cli"] or from_root in ([], ["inferline:__version__"]), f"{module} imports {from_root}"


def test_no_cycles():
    graph = {m: {t for t in ts if t in GRAPH and t != "inferline"} for m, ts in GRAPH.items() if m != "inferline"}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
