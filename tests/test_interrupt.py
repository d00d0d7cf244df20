"""Stop, fail and rerun safely: Ctrl-C, unwritable folders, results that cannot be written."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib import experiments
from lib.experiments import PROJECT_ROOT, ResultsError, get_preset


def wait_for(condition, timeout, what):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_one_ctrl_c_stops_the_grid_search_and_the_same_command_resumes(tmp_path):
    """SIGINT to the whole process group, as a terminal sends it, once the first cell is saved."""
    command = [sys.executable, "-m", "lib", "grid", "--preset", "quick", "--results-dir", str(tmp_path)]
    runs = tmp_path / "quick" / "runs"
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own process group, with its workers
    try:
        wait_for(lambda: list(runs.glob("*.json")) or process.poll() is not None, 300, "the first saved cell")
        assert process.poll() is None, process.communicate()
        os.killpg(process.pid, signal.SIGINT)
        sent = time.monotonic()
        out, err = process.communicate(timeout=30)
        seconds = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    total = len(get_preset("quick").models) * len(get_preset("quick").optimizers) * len(get_preset("quick").lrs)
    saved = sorted(runs.glob("*.json"))
    assert process.returncode == 130, (out, err)
    assert seconds < 15
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1, err
    assert f"{len(saved)} of {total} runs are saved" in lines[0] and str(runs) in lines[0]
    assert f"python -m lib grid --preset quick --results-dir {tmp_path}` resumes" in lines[0]
    assert 1 <= len(saved) < total and not list(runs.glob(".*tmp"))
    for path in saved:  # every saved cell is whole
        assert json.loads(path.read_text())["kind"] == "run"
    # no worker is left training: the folder stays as it is
    time.sleep(2)
    assert sorted(runs.glob("*.json")) == saved
    before = {p.name: p.stat().st_mtime_ns for p in saved}
    again = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert len(list(runs.glob("*.json"))) == total
    assert {p.name: p.stat().st_mtime_ns for p in saved} == before  # resumed: the saved cells were reused


def test_ctrl_c_in_run_many_stops_the_workers_and_says_what_is_saved(tmp_path, monkeypatch):
    """In-process: KeyboardInterrupt while waiting on the workers becomes Interrupted, with the count."""
    preset = get_preset("quick")
    jobs = [(preset.config(m, "SGD", 0.01), preset.grid_seeds) for m in preset.models[:2]]
    experiments.run_many(jobs[:1], tmp_path, workers=1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C during the second run's training

    monkeypatch.setattr(experiments, "train_rounds", interrupted)
    with pytest.raises(experiments.Interrupted) as info:
        experiments.run_many(jobs, tmp_path, force=False, workers=1)
    assert (info.value.saved, info.value.total) == (1, 2)
    assert isinstance(info.value, KeyboardInterrupt)
