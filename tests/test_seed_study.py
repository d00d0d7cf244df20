"""Every seed-report architecture under one protocol, on the quick preset."""
import json

import pytest

from lib import experiments
from lib.experiments import ResultsError
from lib.seed_study import SEED_REPORT_MODELS, load_seed_models, seed_models_study


@pytest.fixture(scope="module")
def study(quick_study):
    results = quick_study[0]
    return results, seed_models_study("quick", results_dir=results, progress=False, workers=1)


def test_every_seed_architecture_has_measured_numbers(study):
    _, s = study
    expected = [n for names in SEED_REPORT_MODELS.values() for n in names]
    assert list(s["models"]) == expected
    for name, entry in s["models"].items():
        assert entry["n_rounds"] == experiments.get_preset("quick").eval_rounds
        assert 0 <= entry["mean_acc"] <= 1 and entry["nb_parameters"] > 0
        assert entry["config"]["epochs"] == experiments.get_preset("quick").epochs  # the common budget
        assert entry["seeds"] == experiments.get_preset("quick").eval_seeds  # the main evaluation's rounds
        assert entry["vs_reference"]["a"] == "NetWSAL" and entry["vs_reference"]["n_pairs"] == entry["n_rounds"]


def test_choices_come_from_the_tuning_stages_on_validation(study):
    _, s = study
    stages = {st["stage"]: st for st in s["tuning"]}
    best = max(stages["000 common (ConvNetBase)"]["cells"], key=lambda c: c["score"])
    assert s["models"]["ConvNetBase"]["chosen"]["model_options"] == best["model_options"]
    assert s["models"]["ConvNetSep"]["chosen"]["model_options"] == best["model_options"]
    for name in SEED_REPORT_MODELS["003"]:
        lr_best = max(stages[f"003 learning rate ({name})"]["cells"], key=lambda c: c["score"])
        batch_best = max(stages[f"003 batch size ({name})"]["cells"], key=lambda c: c["score"])
        assert s["models"][name]["config"]["lr"] == lr_best["lr"]
        assert s["models"][name]["config"]["batch_size"] == batch_best["batch_size"]
    for stage in s["tuning"]:
        assert all(c["val_acc_mean"] is not None for c in stage["cells"])
        assert not set(stage["seeds"]) & set(s["seeds"])  # tuning rounds are not evaluation rounds


def test_summary_includes_the_seed_architectures(study):
    results, s = study
    rows = experiments.summary("quick", results_dir=results)
    for name, entry in s["models"].items():
        assert rows[name]["mean_acc"] == entry["mean_acc"]
        assert rows[name]["report"] == entry["report"]
    assert rows["NetWSAL"]["protocol"] == "common"


def test_results_file_round_trips(study):
    results, s = study
    assert load_seed_models("quick", results_dir=results) == json.loads(json.dumps(s))


def test_missing_main_evaluation_is_a_clear_error(tmp_path):
    with pytest.raises(ResultsError, match="python -m lib evaluate --preset quick"):
        experiments.summary("quick", results_dir=tmp_path)
    with pytest.raises(ResultsError, match="python -m lib seed-models --preset quick"):
        load_seed_models("quick", results_dir=tmp_path)
