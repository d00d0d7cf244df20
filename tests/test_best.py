"""The best-model study on the quick preset: forward selection on validation, two tracks."""
import pytest

from lib import experiments
from lib.best import COURSE_LIMIT, KEEP_MARGIN, STEPS, best_study, load_best
from lib.experiments import ResultsError


@pytest.fixture(scope="module")
def study(quick_study):
    results = quick_study[0]
    return results, best_study("quick", results_dir=results, progress=False, workers=1)


def test_forward_selection_keeps_only_a_clear_paired_validation_gain(study):
    _, s = study
    rows = s["ablation"]
    preset = experiments.get_preset("quick")
    assert len(rows) == 1 + len(STEPS) and rows[0]["kept"]
    current = rows[0]
    for row in rows[1:]:
        assert row["seeds"] == current["seeds"] == preset.tuning_seeds  # paired: the same tuning rounds
        gain = row["vs_current"]
        assert gain["gain_mean"] == pytest.approx(row["score"] - current["score"])
        assert gain["clear"] == (gain["gain_lower"] > KEEP_MARGIN) and gain["gain_lower"] <= gain["gain_mean"] + 1e-12
        allowed = row["track"] == "open" or row["nb_parameters"] <= COURSE_LIMIT
        assert row["kept"] == (allowed and gain["clear"] and row["cpu_minutes_per_round"] <= 5)
        if row["kept"]:
            current = row
        assert row["test_acc_mean"] is not None  # recorded beside, never used
    assert not set(rows[0]["seeds"]) & set(s["seeds"])  # tuning rounds are not evaluation rounds
    assert len(preset.tuning_seeds) == 2 and experiments.get_preset("course").tuning_rounds == 6


def test_the_study_freezes_its_recipe(study):
    from lib.best import config_hash, load_recipe

    results, s = study
    assert s["recipe_sha256"] == s["track_recipes"]["course"] != s["track_recipes"]["open"]
    for track, entry in s["tracks"].items():
        recipe = load_recipe("quick", results_dir=results, track=track)  # one file per track
        assert recipe["recipe_sha256"] == s["track_recipes"][track] and list(recipe["tracks"]) == [track]
        assert recipe["tracks"][track]["config"] == entry["config"]
        assert recipe["tracks"][track]["sha256"] == config_hash(entry["config"])
        assert recipe["kept_steps"] == [r["step"] for r in s["ablation"] if r["kept"] and r["track"] in ("course", track)]


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
    for track in ("course", "open"):
        row = rows[f"DigitCompare ({track} track, development)"]
        assert row["mean_acc"] == s["tracks"][track]["mean_acc"] and row["confirmation"] is False
        assert row["seeds"] == s["seeds"] and row["recipe_sha256"] == s["track_recipes"][track]


def test_missing_results(tmp_path):
    with pytest.raises(ResultsError, match="python -m lib best --preset quick"):
        load_best("quick", results_dir=tmp_path)


def test_the_tracks_name_their_run_files(study):
    results, s = study
    for entry in s["tracks"].values():
        assert entry["runs"] and all((results / "quick" / "runs" / name).is_file() for name in entry["runs"])


def test_a_step_merges_model_options_into_the_current_ones():
    from lib.best import apply_step, start_config

    config = start_config(experiments.get_preset("quick"))
    deeper = apply_step(config, {"model_options": {"widths": [24, 48], "depth": 2}, "tta": True})
    assert deeper.model_options == {**config.model_options, "widths": [24, 48], "depth": 2}
    assert deeper.tta and not config.tta and config.model_options.get("depth") is None


def _record(config, seeds, value):
    return {"config": config.to_dict(), "seeds": seeds, "wall_time_s": 10.0 * len(seeds), "nb_parameters": 5,
            "history": {"test_acc": [[value + s, value] for s in seeds]}, "diverged_epoch": [None] * len(seeds)}


def test_merge_records_concatenates_rounds_in_order():
    config = experiments.get_preset("quick").config("NetWSAL", "Adam", 1e-3)
    merged = experiments.merge_records([_record(config, [1, 2], 0.5), _record(config, [3], 0.25)])
    assert merged["seeds"] == [1, 2, 3] and merged["diverged_epoch"] == [None] * 3
    assert merged["history"]["test_acc"] == [[1.5, 0.5], [2.5, 0.5], [3.25, 0.25]]
    assert merged["wall_time_s"] == 30.0 and merged["key"] is None
    assert merged["parts"] == [experiments.run_path(config, s, "").name for s in ([1, 2], [3])]
    single = _record(config, [1], 0.5)
    assert experiments.merge_records([single]) is single


def test_merge_records_refuses_runs_of_different_configs():
    preset = experiments.get_preset("quick")
    a, b = preset.config("NetWSAL", "Adam", 1e-3), preset.config("NetWSAL", "Adam", 1e-2)
    with pytest.raises(ValueError, match="one config"):
        experiments.merge_records([_record(a, [1], 0.5), _record(b, [2], 0.5)])


def test_development_rows_of_an_earlier_recipe_say_so(study, tmp_path):
    import shutil
    from dataclasses import replace

    from lib.best import freeze_recipe, summary_rows
    from lib.engine import TrainConfig

    results, s = study
    (tmp_path / "quick").mkdir()
    for name in ("evaluation.json", "best.json", "best_recipe.json", "best_recipe_open.json"):
        shutil.copy(results / "quick" / name, tmp_path / "quick" / name)
    assert set(summary_rows("quick", tmp_path)) == {"DigitCompare (course track, development)",
                                                    "DigitCompare (open track, development)"}
    changed = {"open": replace(TrainConfig(**s["tracks"]["open"]["config"]), lr=0.01)}
    freeze_recipe("quick", changed, results_dir=tmp_path)  # the open track's new recipe, not yet evaluated
    assert set(summary_rows("quick", tmp_path)) == {"DigitCompare (course track, development)",
                                                    "DigitCompare (open track, development, earlier recipe)"}
    changed["course"] = replace(TrainConfig(**s["tracks"]["course"]["config"]), lr=0.01)
    freeze_recipe("quick", changed, results_dir=tmp_path)
    assert set(summary_rows("quick", tmp_path)) == {"DigitCompare (course track, development, earlier recipe)",
                                                    "DigitCompare (open track, development, earlier recipe)"}


def test_without_open_steps_the_open_track_is_the_course_recipe(study):
    from dataclasses import replace

    from lib.best import tune

    results, s = study
    preset = replace(experiments.get_preset("quick"), open_steps=False)
    ablation, configs = tune(preset, results_dir=results, progress=False, workers=1)  # cached course steps
    assert [r["step"] for r in ablation] == [r["step"] for r in s["ablation"] if r["track"] == "course"]
    assert configs["open"] == configs["course"]
    assert configs["course"].to_dict() == s["tracks"]["course"]["config"]
