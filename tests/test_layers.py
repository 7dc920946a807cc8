"""The layering of ARCHITECTURE.md, checked: import-linter's contracts (pyproject.toml), what the
engine and `comptroller check` load at run time, and no clock or I/O in the engine."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "kubernetes",
    "kopf",
    "fastapi",
    "uvicorn",
    "cryptography",
    "controller.k8s",
    "controller.webhook",
    "controller.operator",
)


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "broken" in proc.stdout and " 0 broken" in proc.stdout


@pytest.mark.parametrize("module", ["controller.engine", "controller.check"])
def test_light_modules_do_not_load_client_or_web_stacks(module):
    loaded = f"m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m.startswith({HEAVY!r})"
    code = f"import sys, {module}; print(sorted({loaded}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


CLOCK_OR_IO = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("date", "today"),
    ("time", "time"),
    ("time", "monotonic"),
    ("os", "environ"),
    ("os", "getenv"),
}


@pytest.mark.parametrize("path", sorted((ROOT / "controller" / "engine").rglob("*.py")), ids=lambda p: p.name)
def test_the_engine_reads_no_clock_and_does_no_io(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert (node.value.id, node.attr) not in CLOCK_OR_IO, (
                f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}"
            )
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in ("open", "input", "print"), (
                f"{path.name}:{node.lineno} calls {node.func.id}"
            )
