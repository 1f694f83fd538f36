"""The store sits below capture: no module of ``gepa_trace.store`` imports
``gepa_trace.collectors``, directly, inside a function, or through the modules it imports
(``gepa_trace.conventions`` is the neutral module both read spans with)."""

from __future__ import annotations

import ast
from pathlib import Path

import gepa_trace

PACKAGE = Path(gepa_trace.__file__).parent


def _module_path(name: str) -> Path | None:
    parts = name.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(path: Path) -> set[str]:
    """Every gepa_trace module ``path`` imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from gepa_trace.store import tables`` imports a module too
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("gepa_trace.")
            and _module_path(name) is not None}


def _store_modules() -> list[str]:
    return sorted("gepa_trace." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
                  .removesuffix(".__init__") for p in (PACKAGE / "store").rglob("*.py"))


def test_store_modules_import_no_collectors_module():
    seen: dict[str, str] = {}  # module -> the store module whose imports reached it
    todo = [(name, name) for name in _store_modules()]
    while todo:
        name, origin = todo.pop()
        if name in seen:
            continue
        seen[name] = origin
        todo.extend((child, origin) for child in _imports(_module_path(name)))
    reached = {name: origin for name, origin in seen.items()
               if name.startswith("gepa_trace.collectors")}
    assert not reached, f"store imports collectors: {reached}"


def test_import_scan_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from gepa_trace.collectors import views\n")
    assert "gepa_trace.collectors.views" in _imports(module)
