"""The study pipeline on the `quick` preset: cache, resume, force, selection, summary, command line."""
import json
import subprocess
import sys

import numpy as np
import pytest

from lib import experiments, stats
from lib.experiments import PROJECT_ROOT, ResultsError, get_preset


@pytest.fixture(scope="module")
def study(quick_study):
    """The whole quick study, once per session, in a temporary results folder (conftest)."""
    return quick_study


def test_grid_covers_every_cell_and_chooses_on_validation(study):
    results, grid, _ = study
    preset = get_preset("quick")
    assert len(grid["cells"]) == len(preset.models) * len(preset.optimizers) * len(preset.lrs)
    for model in preset.models:
        own = [c for c in grid["cells"] if c["model"] == model]
        best = max(own, key=lambda c: c["score"])
        assert grid["choice"]["per_model"][model]["optimizer"] == best["optimizer"]
        assert grid["choice"]["per_model"][model]["lr"] == best["lr"]
    # The common choice maximises the mean validation score over models.
    scores = {}
    for c in grid["cells"]:
        scores.setdefault((c["optimizer"], c["lr"]), []).append(c["score"])
    best_common = max(scores, key=lambda k: np.mean(scores[k]))
    assert (grid["choice"]["common"]["optimizer"], grid["choice"]["common"]["lr"]) == best_common
    assert (results / "quick" / "grid.json").exists()


def test_selection_ignores_the_test_set(tmp_path):
    """Rewriting every test accuracy of the cached runs does not change the grid's choice."""
    grid = experiments.grid_search("quick", results_dir=tmp_path, progress=False)
    for path in (tmp_path / "quick" / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        record["history"]["test_acc"] = [[1.0 - (v or 0) for v in row] for row in record["history"]["test_acc"]]
        path.write_text(json.dumps(record))
    again = experiments.grid_search("quick", results_dir=tmp_path, progress=False)
    assert again["choice"] == grid["choice"]
    assert [c["test_acc_mean"] for c in again["cells"]] != [c["test_acc_mean"] for c in grid["cells"]]


def test_evaluation_reads_the_choice_from_the_grid_file(study, tmp_path):
    results, grid, evaluation = study
    common = grid["choice"]["common"]
    for entry in evaluation["protocols"]["common"]["models"].values():
        assert (entry["optimizer"], entry["lr"]) == (common["optimizer"], common["lr"])
        assert entry["seeds"] == get_preset("quick").eval_seeds  # fresh data: not the grid's seeds
        assert not set(entry["seeds"]) & set(grid["seeds"])
    # Edit the grid file's choice: the evaluation follows it.
    folder = tmp_path / "quick"
    folder.mkdir()
    edited = dict(grid, choice={"common": {"optimizer": "SGD", "lr": 0.01, "mean_val_acc": 0.5},
                                "per_model": {m: {"optimizer": "SGD", "lr": 0.01} for m in grid["choice"]["per_model"]}})
    (folder / "grid.json").write_text(json.dumps(edited))
    moved = experiments.evaluate("quick", results_dir=tmp_path, progress=False)
    assert {(e["optimizer"], e["lr"]) for e in moved["protocols"]["common"]["models"].values()} == {("SGD", 0.01)}


def test_evaluation_numbers_match_the_runs(study):
    results, _, evaluation = study
    for entry in evaluation["protocols"]["common"]["models"].values():
        record = json.loads((results / "quick" / "runs" / entry["run"]).read_text())
        test = np.array([row[-1] for row in record["history"]["test_acc"]], dtype=float)
        assert entry["mean_acc"] == pytest.approx(test.mean())
        assert entry["std_acc"] == pytest.approx(test.std(ddof=1))
        assert entry["mean_err"] == pytest.approx(1 - test.mean())
        assert entry["n_rounds"] == get_preset("quick").eval_rounds
        assert record["provenance"]["torch"] and record["provenance"]["data_pools"]["test"]["nb_images"] == 10000


def test_comparisons_are_paired_differences(study):
    _, _, evaluation = study
    table = evaluation["protocols"]["common"]["models"]
    for comp in evaluation["protocols"]["common"]["comparisons"]:
        d = np.array(table[comp["b"]]["test_acc"]) - np.array(table[comp["a"]]["test_acc"])
        assert comp["mean_diff"] == pytest.approx(d.mean())
        assert comp["ci95"][0] <= comp["mean_diff"] <= comp["ci95"][1]
        assert comp["median_diff"] == pytest.approx(np.median(d))
        assert comp["wins"] + comp["ties"] + comp["losses"] == comp["n_pairs"] == d.size
        assert 0 <= comp["t_p"] <= comp["t_p_holm"] <= 1
        assert comp["verdict"] == stats.verdict(comp)
        assert comp["without_failed"]["n_pairs"] <= comp["n_pairs"]


def test_failed_rounds_are_decided_on_validation(study):
    _, _, evaluation = study
    for entry in evaluation["protocols"]["common"]["models"].values():
        val = np.array([row[-1] for row in entry["curves"]["val_acc"]], dtype=float)
        reasons = stats.failure_reason(val)
        assert [f["seed"] for f in entry["failed_rounds"]] == [s for s, r in zip(entry["seeds"], reasons) if r]


def test_cache_is_reused_and_force_recomputes(study, monkeypatch):
    results, grid, _ = study

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run was retrained")

    monkeypatch.setattr(experiments, "train_rounds", no_training)
    again = experiments.grid_search("quick", results_dir=results, progress=False)
    assert again["cells"] == grid["cells"]
    with pytest.raises(AssertionError, match="retrained"):
        experiments.grid_search("quick", results_dir=results, progress=False, force=True, workers=1)


class Interrupted(Exception):
    pass


def test_interrupted_grid_resumes_from_finished_cells(tmp_path, monkeypatch):
    trained, interrupted = [], []
    real = experiments.train_rounds

    def counting(config, seeds, **kwargs):
        trained.append((config.model, config.optimizer, config.lr))
        if len(trained) == 3 and not interrupted:
            interrupted.append(True)
            raise Interrupted  # the user stops the search (or the machine dies) during the third cell
        return real(config, seeds, **kwargs)

    monkeypatch.setattr(experiments, "train_rounds", counting)
    with pytest.raises(Interrupted):
        experiments.grid_search("quick", results_dir=tmp_path, progress=False, workers=1)
    assert len(list((tmp_path / "quick" / "runs").glob("*.json"))) == 2
    assert not list((tmp_path / "quick" / "runs").glob(".*tmp"))  # no half-written file
    trained.clear()
    experiments.grid_search("quick", results_dir=tmp_path, progress=False, workers=1)
    preset = get_preset("quick")
    assert len(trained) == len(preset.models) * len(preset.optimizers) * len(preset.lrs) - 2


def test_corrupt_results_file_is_named_and_kept(study, tmp_path):
    results, grid, _ = study
    folder = tmp_path / "quick"
    folder.mkdir()
    (folder / "grid.json").write_text('{"kind": "grid", "cells": [')  # truncated
    with pytest.raises(ResultsError, match=r"grid\.json.*cannot be read"):
        experiments.evaluate("quick", results_dir=tmp_path, progress=False)
    assert (folder / "grid.json").read_text() == '{"kind": "grid", "cells": ['
    run = results / "quick" / "runs" / grid["cells"][0]["run"]  # a run the grid search reads
    broken = tmp_path / "broken"
    (broken / "quick" / "runs").mkdir(parents=True)
    (broken / "quick" / "runs" / run.name).write_text("not json")
    with pytest.raises(ResultsError, match=run.name):
        experiments.grid_search("quick", results_dir=broken, progress=False)
    assert (broken / "quick" / "runs" / run.name).read_text() == "not json"


def test_missing_results_say_what_to_run(tmp_path):
    with pytest.raises(ResultsError, match="python -m lib grid --preset quick"):
        experiments.evaluate("quick", results_dir=tmp_path)
    with pytest.raises(ResultsError, match="python -m lib evaluate --preset quick"):
        experiments.summary("quick", results_dir=tmp_path)


def test_unknown_preset():
    with pytest.raises(ValueError, match="quick, course, seed002"):
        get_preset("huge")


def test_parallel_workers_give_the_same_numbers(study, tmp_path):
    """Two training processes produce the runs that one process produced (up to float rounding)."""
    results, grid, _ = study
    parallel = experiments.grid_search("quick", results_dir=tmp_path, progress=False, workers=2)
    for a, b in zip(grid["cells"], parallel["cells"]):
        assert (a["model"], a["optimizer"], a["lr"]) == (b["model"], b["optimizer"], b["lr"])
        assert a["val_acc_mean"] == pytest.approx(b["val_acc_mean"], abs=0.011)


def test_command_line_summary_json(study):
    results, _, evaluation = study
    out = subprocess.run([sys.executable, "-m", "lib", "summary", "--preset", "quick", "--json",
                          "--results-dir", str(results)], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    rows = json.loads(out.stdout)
    table = evaluation["protocols"]["common"]["models"]
    assert set(table) <= set(rows)  # other studies (seed architectures, best model) may add rows
    for name in table:
        row = rows[name]
        assert row["mean_acc"] == table[name]["mean_acc"] and row["n_rounds"] == table[name]["n_rounds"]
        assert 0 <= row["mean_acc"] <= 1


def test_command_line_error_is_a_message_not_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lib", "summary", "--preset", "quick", "--results-dir", str(tmp_path)],
                         capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert out.returncode == 2
    assert "error: no evaluation results" in out.stderr and "Traceback" not in out.stderr


def test_a_preset_field_added_later_keeps_an_older_results_file(tmp_path):
    """A rerun from the cache after Preset gained a field rewrites nothing (timings kept); a changed
    value of a recorded field still does."""
    path = tmp_path / "grid.json"
    experiments.write_json_atomic(path, {"preset": {"name": "course", "epochs": 25}, "cells": [1], "wall_time_s": 2360.0})
    kept = experiments.write_if_changed(path, {"preset": {"name": "course", "epochs": 25, "tuning_rounds": 6},
                                               "cells": [1], "wall_time_s": 0.05}, ("preset", "cells"))
    assert kept["wall_time_s"] == 2360.0 and experiments.read_json(path)["wall_time_s"] == 2360.0
    written = experiments.write_if_changed(path, {"preset": {"name": "course", "epochs": 30}, "cells": [1],
                                                  "wall_time_s": 0.05}, ("preset", "cells"))
    assert written["wall_time_s"] == 0.05 and experiments.read_json(path)["preset"]["epochs"] == 30
