"""The house rules, checked: one-way layers, no import cycles, small modules and functions, a curated API.

Layers, top to bottom: `cli` -> `commands.*` -> library modules -> shared utilities. Nothing imports
upward, and no command imports another command (lazy imports inside functions count too).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import expert_router

ROOT = Path(expert_router.__file__).parent
REPO = ROOT.parents[1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """Every expert_router module `path` imports, anywhere in it (`from pkg import mod` resolves to the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("expert_router")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("expert_router"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return found & known


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) - {name} for name, path in mods.items()}


def layer(module: str) -> int:
    if module in ("expert_router.cli", "expert_router.__main__"):
        return 0
    if module.startswith("expert_router.commands"):
        return 1
    return 2


def test_layers_import_one_way_and_commands_stay_apart():
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            if target == "expert_router" or target == "expert_router.commands":
                continue  # the package root (version) and the commands' shared HelpFormatter
            if layer(target) < layer(module) or (layer(module) == layer(target) == 1):
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_no_import_cycles():
    edges = graph()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for target in edges.get(node, ()):
            if target in path:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in done:
                visit(target, path + [target])
        done.add(node)

    done: set[str] = set()
    for start in edges:
        if start not in done:
            visit(start, [start])
    cycles = [c for c in cycles if "expert_router" not in c]  # the root only carries the version and API
    assert not cycles, cycles


def test_modules_and_functions_are_small():
    too_long = []
    for name, path in modules().items():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, too_long


def test_benchmarks_import_the_package_not_the_tests():
    for path in (REPO / "bench").glob("*.py"):
        assert "sys.path" not in path.read_text(), path.name


def test_public_api_is_curated():
    assert sorted(expert_router.__all__) == sorted(
        [
            "BadRequest",
            "Classifier",
            "ClassifierSettings",
            "ClientError",
            "Deployment",
            "ExpertRouterError",
            "RequestRecord",
            "Routes",
            "RunSettings",
            "UserError",
            "WorkItem",
            "WorkloadSpec",
            "__version__",
            "build_app",
            "draw_workload",
            "load_deployment",
            "read_records",
            "summarize",
        ]
    )
    for name in expert_router.__all__:
        assert getattr(expert_router, name) is not None


def test_every_export_is_loaded_lazily_and_listed_once():
    from expert_router import _EXPORTS  # type: ignore[attr-defined]

    assert set(expert_router.__all__) == {"__version__", *_EXPORTS}


def test_the_cli_and_routing_import_no_fitting_or_plotting_library():
    """Every command (and the gateway's routing) starts without scikit-learn, SciPy, pandas or matplotlib:
    together they took ~2 s before `--help` printed. They are imported where a fit or a figure needs them."""
    code = (
        "import sys\n"
        "import expert_router.cli, expert_router.gateway.app, expert_router.classifier\n"
        "print(' '.join(m for m in ('sklearn', 'scipy', 'pandas', 'matplotlib') if m in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
