"""The layout's own rules: no import cycles, a light CLI, thop_ext on the core only, small modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("slimbench", "thop_ext")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports, at module level or inside functions (lazy imports count)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_sees_a_lazy_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40
    assert find_cycles(graph) == []


def test_thop_ext_depends_on_the_core_only():
    for name, targets in import_graph().items():
        if name.startswith("thop_ext"):
            outside = {t for t in targets if t.startswith("slimbench") and not t.startswith("slimbench.core")}
            assert not outside, f"{name} imports {outside}"


def test_subpackages_show_the_pipeline():
    for package in ("core", "analysis", "pruning", "bench", "training", "cli", "models"):
        assert (ROOT / "slimbench" / package / "__init__.py").is_file()


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_help_imports_no_torch():
    code = ("import sys\nfrom slimbench.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "COMMAND" in out and out.strip().endswith("NO-TORCH")


def test_python_dash_m_slimbench():
    out = subprocess.run([sys.executable, "-m", "slimbench", "--help"], capture_output=True, text=True, check=True)
    assert "report" in out.stdout


def test_public_api_is_lazy_and_complete():
    code = ("import sys, slimbench\nassert 'torch' not in sys.modules\n"
            "missing = [n for n in slimbench.__all__ if getattr(slimbench, n, None) is None]\nprint(missing)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
