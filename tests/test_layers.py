"""``backends/`` is the lower layer: nothing in it may import ``gateway/`` (the gateway composes backends,
never the other way round). Checked on the source, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

BACKENDS = Path(__file__).resolve().parent.parent / "backends"


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_backends_never_import_gateway() -> None:
    files = sorted(BACKENDS.glob("*.py"))
    assert len(files) > 5  # the check must look at the real package
    offenders = [
        f"{path.name}:{line} imports {module}"
        for path in files
        for line, module in _imports(path)
        if module == "gateway" or module.startswith("gateway.")
    ]
    assert offenders == []


def test_the_check_sees_a_lazy_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from gateway.config.settings import Settings\n    return Settings\n")
    assert _imports(bad) == [(2, "gateway.config.settings")]
