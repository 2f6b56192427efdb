"""The benchmarks run on a plain `pip install .`: they import nothing from tests/ and
nothing a plain install lacks (pytest above all); each one's --help works that way.

The benchmarks themselves are not run here (they take minutes and load the machine);
docs/benchmarks.md has their figures.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted((REPO / "benchmarks").glob("bench_*.py"))
TEST_MODULES = {path.stem for path in (REPO / "tests").glob("*.py")}

# The script run as `python SCRIPT --help` runs it (its folder first on sys.path), but
# `import pytest` fails as it would on a plain install, and tests/ is not on the path.
PLAIN = """
import os, runpy, sys
sys.modules["pytest"] = None
sys.path = [p for p in sys.path if not p.rstrip("/").endswith("tests")]
sys.path.insert(0, os.path.dirname(sys.argv[1]))
sys.argv = [sys.argv[1], "--help"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def imported_modules(path):
    """Every module a script imports, at any depth (a lazy import counts too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_every_benchmark_is_checked():
    assert len(BENCHMARKS) >= 8


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports_nothing_from_tests(script):
    assert not imported_modules(script) & (TEST_MODULES | {"pytest"})


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_help_without_pytest(script):
    done = subprocess.run([sys.executable, "-c", PLAIN, str(script)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
