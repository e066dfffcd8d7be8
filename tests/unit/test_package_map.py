"""Issue 16 point 7: no process's package imports another process's internals. The process
packages are the supervisor, the gateway, the worker and the CLI; what several of them use lives
in a package named for its mechanism (docs/architecture.md, "Packages")."""
import ast
from pathlib import Path

import sora

SORA = Path(sora.__file__).parent
PROCESS_PACKAGES = {"supervisor", "gateway", "worker", "cli"}


def imported_packages(path: Path) -> set[str]:
    """The top-level sora packages a module imports (relative or absolute)."""
    package = path.relative_to(SORA).parts[:-1]   # e.g. ("worker",) or ("runtimes", "nodejs")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - (node.level - 1)])
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts] if node.module else [base + [a.name] for a in node.names]
            elif node.module and node.module.startswith("sora."):
                names = [node.module.split(".")[1:]]
            else:
                continue
            for parts in names:
                if parts:
                    found.add(parts[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sora."):
                    found.add(alias.name.split(".")[1])
    return found


def test_no_process_package_imports_another_process_package():
    crossings = []
    for path in SORA.rglob("*.py"):
        parts = path.relative_to(SORA).parts
        own = parts[0] if len(parts) > 1 else None
        for target in imported_packages(path) & PROCESS_PACKAGES:
            if target != own:
                crossings.append(f"{path.relative_to(SORA.parent)} imports sora.{target}")
    assert not crossings, "\n".join(sorted(crossings))


def test_the_check_sees_relative_and_absolute_imports():
    """The walker must be able to fail: a module importing the gateway from the worker is seen."""
    module = SORA / "worker" / "main.py"
    assert "runtimes" in imported_packages(module) and "control" not in imported_packages(module)
    assert "messaging" in imported_packages(SORA / "events" / "dispatcher.py")
