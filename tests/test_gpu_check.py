"""The GPU check runs on a bare image without Ray, Optuna or MLflow: what it imports must not
need them (the full rehearsal, a venv without them, is `make gpu-rehearsal`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GPU_CHECK = ROOT / "bench" / "gpu_check.sh"


def gpu_check_modules() -> list[Path]:
    """The test files with GPU-marked tests and the benchmark scripts gpu_check.sh runs."""
    tests = [
        p for p in sorted((ROOT / "tests").glob("test_*.py")) if "pytest.mark.gpu" in p.read_text()
    ]
    scripts = sorted(set(re.findall(r"bench/\w+\.py", GPU_CHECK.read_text())))
    return tests + [ROOT / s for s in scripts]


def test_the_gpu_check_runs_the_gpu_tests_and_three_benchmarks():
    names = {p.name for p in gpu_check_modules()}
    assert {"step_cost.py", "throughput.py", "trials_per_gpu.py"} <= names
    assert "test_fast_path.py" in names and "test_calibration.py" in names


@pytest.mark.slow  # a fresh interpreter
def test_what_the_gpu_check_imports_needs_no_ray_optuna_or_mlflow():
    code = f"""
import importlib.util, sys
for i, path in enumerate({[str(p) for p in gpu_check_modules()]!r}):
    spec = importlib.util.spec_from_file_location(f"gpu_check_module_{{i}}", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
print(sorted(m for m in ("ray", "optuna", "mlflow") if m in sys.modules))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
