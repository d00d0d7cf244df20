"""benchmarks/compare_results.py: a results folder against a reference one (the GPU check's summary),
on the quick study's results (conftest.quick_study)."""
import importlib.util
import json
import shutil

import pytest

from lib import stats
from lib.experiments import PROJECT_ROOT

spec = importlib.util.spec_from_file_location("compare_results", PROJECT_ROOT / "benchmarks" / "compare_results.py")
compare_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_results)


@pytest.fixture
def copy_of_quick(quick_study, tmp_path):
    """A copy of the quick study's results folder, and a function editing its evaluation.json."""
    results = quick_study[0]
    copy = tmp_path / "new"
    shutil.copytree(results, copy)
    path = copy / "quick" / "evaluation.json"

    def edit(change):
        evaluation = json.loads(path.read_text())
        change(evaluation)
        path.write_text(json.dumps(evaluation))

    return results, copy, edit


def test_mean_interval_is_the_t_interval_of_the_mean():
    mean, (low, high) = stats.mean_interval([0.8, 0.9, 1.0, None])
    half = 4.302652729911275 * 0.1 / 3 ** 0.5  # t(0.975, 2) * s / sqrt(n)
    assert mean == pytest.approx(0.9) and low == pytest.approx(0.9 - half) and high == pytest.approx(0.9 + half)
    assert stats.mean_interval([0.7]) == (0.7, None)
    assert stats.mean_interval([None]) == (None, None)


def test_the_same_results_agree_round_for_round(quick_study, capsys):
    results = quick_study[0]
    c = compare_results.compare(results, results, "quick")
    assert c["ok"] and c["same_data"] and c["same_grid_choice"]
    assert c["nb_inside"] == c["nb_models"] == 8  # 4 models x 2 protocols
    for rows in c["protocols"].values():
        for row in rows.values():
            assert row["new_mean"] == row["reference_mean"] and row["paired_mean_diff"] == 0
            assert row["rounds_identical"] == row["rounds_paired"] == 3
    assert compare_results.main([str(results), "--reference", str(results), "--preset", "quick"]) == 0
    out = capsys.readouterr().out
    assert "8 of 8 new means inside the reference 95 % interval" in out and "3/3 rounds identical" in out


def test_a_mean_outside_the_interval_is_flagged(copy_of_quick, capsys):
    reference, new, edit = copy_of_quick

    def lower_netwsal(evaluation):
        entry = evaluation["protocols"]["common"]["models"]["NetWSAL"]
        entry["test_acc"] = [v - 0.2 for v in entry["test_acc"]]

    edit(lower_netwsal)
    c = compare_results.compare(new, reference, "quick")
    row = c["protocols"]["common"]["NetWSAL"]
    assert not c["ok"] and c["nb_inside"] == 7 and not row["inside"]
    assert row["paired_mean_diff"] == pytest.approx(-0.2) and row["rounds_identical"] == 0
    assert compare_results.main([str(new), "--reference", str(reference), "--preset", "quick"]) == 1
    line = next(l for l in capsys.readouterr().out.splitlines() if "NetWSAL" in l and "NO" in l)
    assert "-20.00 points, 0/3 rounds identical" in line


def test_other_data_or_another_setting_is_said(copy_of_quick):
    reference, new, edit = copy_of_quick

    def other_data_and_setting(evaluation):
        evaluation["provenance"]["data_pools"]["train"]["md5"]["train-images-idx3-ubyte.gz"] = "0" * 32
        entry = evaluation["protocols"]["per_model"]["models"]["NetWS"]
        entry["optimizer"] = "Adadelta"
        evaluation["grid_choice"]["per_model"]["NetWS"]["optimizer"] = "Adadelta"

    edit(other_data_and_setting)
    c = compare_results.compare(new, reference, "quick")
    assert not c["same_data"] and not c["ok"] and not c["same_grid_choice"]
    row = c["protocols"]["per_model"]["NetWS"]
    assert "paired_mean_diff" not in row and "not paired" in row["note"]
    text = compare_results.format_report(c)
    assert "OTHER MNIST FILES" in text and "OTHER settings chosen" in text and "new Adadelta" in text


def test_a_missing_results_folder_is_exit_status_2(quick_study, tmp_path, capsys):
    assert compare_results.main([str(tmp_path), "--reference", str(quick_study[0]), "--preset", "quick"]) == 2
    assert "no evaluation results" in capsys.readouterr().err
