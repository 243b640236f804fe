"""The direction of every import arrow, checked on the source of every module of ``gateway/`` and
``backends/`` (walked recursively), so a lazy import inside a function or an ``if TYPE_CHECKING`` import
counts too.

- ``gateway/``'s sub-packages are layers, ordered top to bottom in ``LAYERS``: a module imports its own layer
  and the layers below it, never one above.
- ``backends/`` is below all of them and imports nothing of ``gateway/``.
- A backend kind lives in its package (``backends/<kind>/``): nothing outside it imports it, except the
  registry of the built-in kinds (``backends/builtin.py``) and the exceptions in ``KIND_USES``.
- No import cycle, between any two modules.

Each check also counts what it looked at, so that it cannot pass on an empty or moved tree.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# gateway's layers, top to bottom: each may import itself and the ones after it.
LAYERS = [
    "cli",
    "http",
    "control",
    "fleet",
    "observability",
    "api",
    "scheduling",
    "routing",
    "resources",
    "config",
]
KINDS = {"llama_cpp", "llama_server", "container", "remote"}
# Who may import a kind's package besides itself, and why.
KIND_USES = {
    ("backends.container", "backends.llama_server"),  # a llama.cpp container runs llama-server's command line
    ("gateway.cli", "backends.llama_server"),  # the build-llama-server command
    ("backends.builtin", "backends.llama_cpp"),
    ("backends.builtin", "backends.llama_server"),
    ("backends.builtin", "backends.container"),
    ("backends.builtin", "backends.remote"),
}


def modules() -> dict[str, Path]:
    found = {}
    for package in ("gateway", "backends"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> Iterator[tuple[int, str]]:
    """Every module of ours that ``path`` (module ``name``) imports, with the line."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("gateway", "backends"):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] not in ("gateway", "backends"):
                continue
            for alias in node.names:  # ``from pkg import module`` imports the module
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in known else base


def layer(module: str) -> int | None:
    """The rank of a gateway module's layer (0: top); None for the package's own ``__init__``."""
    parts = module.split(".")
    if parts[0] != "gateway" or len(parts) < 2:
        return None
    assert parts[1] in LAYERS, f"{module} is in no layer: add its package to LAYERS"
    return LAYERS.index(parts[1])


def kind_of(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "backends" and len(parts) > 1 and parts[1] in KINDS else None


def arrows() -> list[tuple[str, int, str]]:
    known = modules()
    return [
        (name, line, target) for name, path in known.items() for line, target in imports(path, name, known)
    ]


def violations(edges: list[tuple[str, int, str]]) -> list[str]:
    found = []
    for source, line, target in edges:
        where = f"{source}:{line} imports {target}"
        if source.startswith("backends") and target.startswith("gateway"):
            found.append(f"{where}: backends/ never imports gateway/")
        src, dst = layer(source), layer(target)
        if src is not None and dst is not None and dst < src:
            found.append(f"{where}: {LAYERS[src]} is below {LAYERS[dst]}")
        kind = kind_of(target)
        if kind is not None and kind_of(source) != kind:
            owner = next((a for a, b in KIND_USES if b == kind and source.startswith(a)), None)
            if owner is None:
                found.append(f"{where}: a kind's package is its own (use the registry, backends.kinds)")
    return found


def cycles(edges: list[tuple[str, int, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), plus self-imports."""
    graph: dict[str, set[str]] = {}
    for source, _, target in edges:
        # A parent package runs before its submodules anyway: that arrow is not a dependency.
        if not source.startswith(target + ".") and target != source:
            graph.setdefault(source, set()).add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_checked() -> None:
    known = modules()
    on_disk = [p for package in ("gateway", "backends") for p in (ROOT / package).rglob("*.py")]
    assert len(known) == len(on_disk) > 80
    for name in known:  # every gateway module is in a layer (layer() asserts it)
        layer(name)
    assert {name.split(".")[1] for name in known if name.startswith("gateway.")} == set(LAYERS)
    assert all(f"backends.{k}.kind" in known for k in KINDS)  # each kind declares itself


def test_every_arrow_points_down() -> None:
    edges = arrows()
    assert len(edges) > 400  # the check saw the real tree's imports
    assert {layer(s) for s, _, _ in edges} >= set(range(len(LAYERS)))
    assert violations(edges) == []


def test_no_import_cycle_type_only_and_lazy_included() -> None:
    assert cycles(arrows()) == []


def test_an_upward_arrow_is_caught() -> None:
    edges = [
        ("gateway.routing.pool", 3, "gateway.http.app"),
        ("backends.base", 4, "gateway.config.settings"),
        ("gateway.scheduling.registry", 5, "backends.llama_cpp.replica"),
        ("backends.supervisor", 6, "backends.container.replica"),
        ("gateway.http.app", 7, "gateway.routing.pool"),  # downward: fine
        ("backends.container.presets", 8, "backends.llama_server.args"),  # allowed in KIND_USES
    ]
    found = violations(edges)
    assert len(found) == 4
    assert "routing is below http" in found[0]
    assert "never imports gateway" in found[1]
    assert all("a kind's package is its own" in f for f in found[2:])


def test_a_cycle_is_caught() -> None:
    edges = [
        ("gateway.a.x", 1, "gateway.a.y"),
        ("gateway.a.y", 2, "gateway.a.z"),
        ("gateway.a.z", 3, "gateway.a.x"),
    ]
    assert cycles(edges) == [["gateway.a.x", "gateway.a.y", "gateway.a.z"]]


def test_the_walk_sees_lazy_type_only_and_relative_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from gateway.http.app import build_app\n"
        "def f():\n    from gateway.config.settings import Settings\n    return Settings\n"
        "from . import pool\n"
    )
    known = {"gateway.routing.pool": bad}
    assert sorted(imports(bad, "gateway.routing.bad", known)) == [
        (3, "gateway.http.app"),
        (5, "gateway.config.settings"),
        (7, "gateway.routing.pool"),
    ]
