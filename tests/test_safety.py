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


def unwritable(tmp_path):
    """A folder that cannot be created, even by root: its parent is a file."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    return blocker / "results"


def test_an_unwritable_results_folder_fails_before_any_training(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(experiments, "train_rounds", lambda *a, **k: trained.append(a))
    with pytest.raises(ResultsError, match="cannot write the results into .*a_file/results/quick/runs.*nothing was run"):
        experiments.grid_search("quick", results_dir=unwritable(tmp_path), progress=False, workers=1)
    assert trained == []
    out = subprocess.run([sys.executable, "-m", "lib", "grid", "--preset", "quick", "--results-dir",
                          str(unwritable(tmp_path))], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("error: cannot write the results") and len(out.stderr.strip().splitlines()) == 1


def test_a_run_that_cannot_be_written_is_kept_and_named(tmp_path, monkeypatch):
    preset = get_preset("quick")
    config = preset.config("NetWS", "SGD", 0.01)
    monkeypatch.setattr(experiments, "UNSAVED_DIR", tmp_path / "unsaved")
    real = experiments.write_json_atomic

    def refuse_the_results_folder(path, obj):
        if "unsaved" not in str(path):
            raise PermissionError(13, "Permission denied")
        return real(path, obj)

    monkeypatch.setattr(experiments, "write_json_atomic", refuse_the_results_folder)
    with pytest.raises(ResultsError, match="the finished run was saved to .*unsaved") as info:
        experiments.run_cached(config, preset.grid_seeds, tmp_path / "results")
    kept = tmp_path / "unsaved" / experiments.run_path(config, preset.grid_seeds, "").name
    assert str(kept) in str(info.value)
    record = json.loads(kept.read_text())
    assert record["key"] == experiments.run_key(config, preset.grid_seeds) and len(record["history"]["val_acc"]) == 2


def test_results_files_get_the_usual_permissions(tmp_path):
    path = tmp_path / "r.json"
    previous = os.umask(0o022)
    try:
        experiments.write_json_atomic(path, {"a": 1})
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        experiments.write_json_atomic(path, {"a": 2})
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(previous)
    assert json.loads(path.read_text()) == {"a": 2} and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_grid_without_data_fails_once_and_leaves_no_folder(tmp_path, monkeypatch):
    from lib import data

    monkeypatch.setattr(data, "MIRRORS", ["http://127.0.0.1:9/"])
    monkeypatch.delenv("PYTORCH_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.MnistError, match="127.0.0.1:9"):
        experiments.grid_search("quick", results_dir=tmp_path / "results", progress=False, workers=2)
    assert not (tmp_path / "data").exists()


def test_the_corrupt_file_message_says_to_delete_that_one_file(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{")
    with pytest.raises(ResultsError, match="delete this one file") as info:
        experiments.read_json(bad)
    assert "force" not in str(info.value)


def test_a_run_file_without_history_is_named_not_a_key_error(tmp_path):
    preset = get_preset("quick")
    config = preset.config("NetWS", "SGD", 0.01)
    path = experiments.run_path(config, preset.grid_seeds, tmp_path)
    experiments.write_json_atomic(path, {"kind": "run", "key": experiments.run_key(config, preset.grid_seeds),
                                         "config": config.to_dict(), "seeds": preset.grid_seeds})
    with pytest.raises(ResultsError, match=f"{path.name} has no history, diverged_epoch.*Delete this one file"):
        experiments.run_cached(config, preset.grid_seeds, tmp_path)


def test_bad_seeds_name_the_argument():
    from lib import data, engine, pool

    with pytest.raises(ValueError, match="seed must be an int or None, got 'x'"):
        data.generate_pair_sets(1000, seed="x")
    with pytest.raises(ValueError, match="train_rounds: seeds must be integers, got 'a'"):
        engine.train_rounds(engine.TrainConfig(), seeds=["a"])
    with pytest.raises(ValueError, match="train_rounds_parallel: seeds must be integers, got 1.5"):
        pool.train_rounds_parallel(engine.TrainConfig(), seeds=[0, 1.5])


def test_an_unwritable_figures_folder_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lib", "data-summary", "--figures", str(unwritable(tmp_path))],
                         capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith("error: cannot write the figure into ") and "a_file/results" in out.stderr


def test_the_help_of_all_names_every_study_it_runs_and_how_long():
    out = subprocess.run([sys.executable, "-m", "lib", "--help"], capture_output=True, text=True, cwd=PROJECT_ROOT,
                         timeout=60)
    line = next(l for l in out.stdout.splitlines() if "python -m lib all" in l)
    for study in ("grid", "evaluate", "seed-models", "best", "figures", "summary"):
        assert study in line
    assert "about 90 min" in out.stdout and "verify" in out.stdout
    assert "Ctrl-C" in out.stdout
