"""benchmarks/gpu_check.sh without a GPU: it stops at once, says what is missing, and writes that to
its report file. (`GPU_CHECK_ALLOW_CPU=1 PRESET=quick` runs every stage on the CPU: too slow for
the suite, see docs/gpu.md.)"""
import os
import subprocess
import sys

import pytest
import torch

from lib.experiments import PROJECT_ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: the check would run")
def test_without_cuda_the_check_stops_with_a_clear_message(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    env.pop("GPU_CHECK_ALLOW_CPU", None)
    done = subprocess.run(["bash", str(PROJECT_ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr
    report = (tmp_path / "gpu_check.txt").read_text()
    assert "MISSING: no CUDA device visible to torch" in report and "GPU_CHECK_ALLOW_CPU=1 PRESET=quick" in report
    assert "NOT RUN (exit status 3)" in report and "== tests" not in report
    assert report in done.stdout  # printed at the end
