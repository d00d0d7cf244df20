"""The best-model study on the quick preset: forward selection on validation, two tracks."""
import pytest

from lib import experiments
from lib.best import COURSE_LIMIT, STEPS, best_study, load_best
from lib.experiments import ResultsError


@pytest.fixture(scope="module")
def study(quick_study):
    results = quick_study[0]
    return results, best_study("quick", results_dir=results, progress=False, workers=1)


def test_forward_selection_keeps_only_what_raises_validation(study):
    _, s = study
    rows = s["ablation"]
    assert len(rows) == 1 + len(STEPS) and rows[0]["kept"]
    best = rows[0]["score"]
    for row in rows[1:]:
        allowed = row["track"] == "open" or row["nb_parameters"] <= COURSE_LIMIT
        assert row["kept"] == (allowed and row["score"] > best and row["cpu_minutes_per_round"] <= 5)
        if row["kept"]:
            best = row["score"]
        assert row["test_acc_mean"] is not None  # recorded beside, never used
    assert not set(rows[0]["seeds"]) & set(s["seeds"])  # tuning rounds are not evaluation rounds


def test_tracks_are_evaluated_on_the_main_rounds_within_limits(study):
    _, s = study
    course, open_ = s["tracks"]["course"], s["tracks"]["open"]
    assert course["nb_parameters"] <= COURSE_LIMIT and course["within_limits"]
    assert course["config"]["epochs"] == experiments.get_preset("quick").epochs
    kept_course = [r for r in s["ablation"] if r["kept"] and r["track"] == "course"][-1]
    assert {k: v for k, v in course["config"].items() if k != "eval_every"} == \
        {k: v for k, v in kept_course["config"].items() if k != "eval_every"}
    for entry in (course, open_):
        assert entry["seeds"] == experiments.get_preset("quick").eval_seeds
        assert entry["vs_reference"]["n_pairs"] == entry["n_rounds"]


def test_summary_lists_both_tracks(study):
    results, s = study
    rows = experiments.summary("quick", results_dir=results)
    assert rows["DigitCompare (course track)"]["mean_acc"] == s["tracks"]["course"]["mean_acc"]
    assert rows["DigitCompare (open track)"]["mean_acc"] == s["tracks"]["open"]["mean_acc"]


def test_missing_results(tmp_path):
    with pytest.raises(ResultsError, match="python -m lib best --preset quick"):
        load_best("quick", results_dir=tmp_path)
