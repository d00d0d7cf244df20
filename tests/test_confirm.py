"""The best model's frozen recipe and its one-shot confirmation block (quick preset, tmp folders).

Cheap recipes (two epochs, one model per round) stand in for the tuned ones: what is tested is the
protocol (which block, which refusals), not the recipe."""
import shutil
from dataclasses import replace

import numpy as np
import pytest

from lib import experiments
from lib.__main__ import main
from lib.best import (KEEP_CONFIDENCE, _recipe_hash, blocks_used, config_hash, confirm, confirmation_path,
                      freeze_recipe, keep_rule, load_confirmation, load_recipe, recipe_path, start_config, used_blocks)
from lib.experiments import ResultsError, read_json, run_cached, write_json_atomic

PRESET = experiments.get_preset("quick")


@pytest.fixture
def results(quick_study, tmp_path):
    """A fresh results folder holding the quick study's evaluation (the NetWSAL references)."""
    folder = tmp_path / "results"
    (folder / "quick").mkdir(parents=True)
    shutil.copy(quick_study[0] / "quick" / "evaluation.json", folder / "quick" / "evaluation.json")
    return folder


def _configs(lr=1e-3):
    course = replace(start_config(PRESET), lr=lr, eval_every=1)
    return {"course": course, "open": replace(course, repair=True)}


def _confirm(results, track="course"):
    return confirm("quick", results_dir=results, progress=False, workers=1, track=track)


def test_each_track_is_frozen_with_hashes_on_its_own_unused_block(results):
    recipes = freeze_recipe("quick", _configs(), results_dir=results)
    course, open_ = recipes["course"], recipes["open"]
    assert course["block"] == 0 and course["seeds"] == PRESET.confirm_seeds(0) == [9000, 9001, 9002]
    assert open_["block"] == 1 and open_["seeds"] == PRESET.confirm_seeds(1)  # not the course track's block
    assert course["blocks_used_before"] == [] and open_["blocks_used_before"] == [0]
    for track, recipe in recipes.items():
        assert list(recipe["tracks"]) == [track] and recipe["track"] == track
        for entry in (*recipe["tracks"].values(), *recipe["references"].values()):
            assert entry["sha256"] == config_hash(entry["config"])
        assert recipe["tracks"][track]["config"] == _configs()[track].to_dict()
        assert load_recipe("quick", results_dir=results, track=track) == recipe
    assert recipe_path("quick", results).name == "best_recipe.json"
    assert recipe_path("quick", results, "open").name == "best_recipe_open.json"
    assert course["recipe_sha256"] != open_["recipe_sha256"]
    # Frozen again unchanged: the same files, the same blocks.
    assert freeze_recipe("quick", _configs(), results_dir=results) == recipes
    # No cached run of the study reaches the confirmation seeds.
    assert not set(PRESET.confirm_seeds(0)) & set(PRESET.grid_seeds + PRESET.eval_seeds + PRESET.tuning_seeds)


def test_confirmation_runs_once_per_track_and_is_re_read(results):
    recipes = freeze_recipe("quick", _configs(), results_dir=results)
    for k, track in enumerate(("course", "open")):
        recipe = recipes[track]
        study = _confirm(results, track)
        assert study["block"] == recipe["block"] == k and study["seeds"] == recipe["seeds"]
        assert study["blocks_used"] == k + 1 and study["recipe_sha256"] == recipe["recipe_sha256"]
        assert set(study["tracks"]) == {track} and set(study["references"]) == {"common", "per_model"}
        entry = study["tracks"][track]
        assert entry["seeds"] == recipe["seeds"] and entry["n_rounds"] == len(recipe["seeds"])
        for protocol, reference in study["references"].items():
            assert reference["seeds"] == entry["seeds"]  # paired on the block
            assert entry["vs_reference"][protocol]["n_pairs"] == entry["n_rounds"]
        # Rerun with the same recipe: its own runs are re-read, nothing is trained or refused.
        assert _confirm(results, track) == study == load_confirmation("quick", results_dir=results, track=track)
    assert confirmation_path("quick", results).exists() and confirmation_path("quick", results, "open").exists()
    assert blocks_used("quick", results) == 2 and used_blocks("quick", results) == [0, 1]


def test_confirmation_refuses_seeds_the_cache_has_seen(results, capsys):
    freeze_recipe("quick", _configs(), results_dir=results)
    peek = PRESET.config("NetWSAL", "Adam", 1e-3)
    run_cached(peek, [9001], results / "quick")  # someone trained on one of the course block's rounds
    with pytest.raises(ResultsError, match="already seen by .*NetWSAL"):
        _confirm(results)
    assert main(["confirm", "--preset", "quick", "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: confirmation block 0") and err.count("\n") == 1
    assert not confirmation_path("quick", results).exists()
    run_cached(peek, [9101], results / "quick")  # and on one of the open track's
    with pytest.raises(ResultsError, match="confirmation block 1 .*already seen by .*NetWSAL"):
        _confirm(results, "open")
    assert not confirmation_path("quick", results, "open").exists()
    # Freezing again moves the recipes to the next unused blocks.
    for track in ("course", "open"):
        recipe_path("quick", results, track).unlink()
    assert used_blocks("quick", results) == [0, 1]
    recipes = freeze_recipe("quick", _configs(), results_dir=results)
    assert recipes["course"]["block"] == 2 and recipes["open"]["block"] == 3


def test_a_different_recipe_is_refused_on_a_used_block(results):
    first = freeze_recipe("quick", _configs(), results_dir=results)["course"]
    _confirm(results)
    # A changed recipe written over the frozen one, hashes recomputed, on the block already seen.
    changed = freeze_recipe("quick", _configs(lr=3e-3), results_dir=results)
    # the honest path: the next blocks (block 1 is the open track's, frozen and still unseen, now changed too)
    assert changed["course"]["block"] == 1 and changed["course"]["blocks_used_before"] == [0]
    assert changed["open"]["block"] == 2
    forged = dict(changed["course"], block=first["block"], seeds=first["seeds"])
    write_json_atomic(recipe_path("quick", results), forged)
    with pytest.raises(ResultsError, match="already used by recipe"):
        _confirm(results)
    # The other track may not take a confirmed block either.
    forged = dict(changed["open"], block=first["block"], seeds=first["seeds"])
    write_json_atomic(recipe_path("quick", results, "open"), forged)
    with pytest.raises(ResultsError, match="already used by recipe"):
        _confirm(results, "open")
    # The honest path runs on block 1 and keeps the ledger of both blocks.
    write_json_atomic(recipe_path("quick", results), changed["course"])
    study = _confirm(results)
    assert study["block"] == 1 and study["seeds"] == PRESET.confirm_seeds(1) == [9100, 9101, 9102]
    assert [b["block"] for b in study["blocks"]] == [0, 1] and study["blocks_used"] == 2
    assert [b["recipe_sha256"] for b in study["blocks"]] == [first["recipe_sha256"], changed["course"]["recipe_sha256"]]


def _freeze_for_both_tracks(results, configs):
    """The course preset's first recipe: both tracks in best_recipe.json (written before the tracks
    were frozen apart), the open track being the course recipe."""
    recipe = freeze_recipe("quick", {"course": configs["course"]}, results_dir=results)["course"]
    recipe["tracks"]["open"] = recipe["tracks"]["course"]
    recipe.pop("track")
    recipe["recipe_sha256"] = _recipe_hash(recipe["tracks"], recipe["references"])
    write_json_atomic(recipe_path("quick", results), recipe)
    return recipe


def test_the_open_track_gets_its_own_recipe_and_block_the_course_track_keeps_its_own(results, capsys):
    import json

    course = replace(start_config(PRESET), eval_every=1)
    shared = _freeze_for_both_tracks(results, {"course": course})
    first = _confirm(results)
    assert set(first["tracks"]) == {"course", "open"} and first["block"] == 0
    kept = {p: p.read_bytes() for p in (recipe_path("quick", results), confirmation_path("quick", results))}
    # The open track tuned apart: only its recipe is new, in its own file, on the next block.
    recipes = freeze_recipe("quick", {"course": course, "open": replace(course, ensemble=2)}, results_dir=results)
    assert recipes["course"] == shared and recipes["open"]["block"] == 1
    assert recipes["open"]["recipe_sha256"] != shared["recipe_sha256"]
    assert load_recipe("quick", results, "open") == recipes["open"]
    # Before its confirmation the open track has no confirmation row (block 0 ran its earlier recipe).
    assert main(["summary", "--preset", "quick", "--results-dir", str(results), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert "DigitCompare (course track, confirmation)" in rows and "DigitCompare (open track, confirmation)" not in rows
    assert main(["confirm", "--preset", "quick", "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    assert "confirmation block 0 (course track)" in out and "confirmation block 1 (open track)" in out
    assert "confirmation blocks used: 2" in out
    # The course track's recipe and confirmation files are as they were, byte for byte.
    assert {p: p.read_bytes() for p in kept} == kept
    second = load_confirmation("quick", results, "open")
    assert set(second["tracks"]) == {"open"} and second["block"] == 1 and second["blocks_used"] == 2
    assert load_confirmation("quick", results, "course") == first
    assert main(["summary", "--preset", "quick", "--results-dir", str(results), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    course_row, open_row = (rows[f"DigitCompare ({t} track, confirmation)"] for t in ("course", "open"))
    assert course_row["mean_acc"] == first["tracks"]["course"]["mean_acc"] and course_row["block"] == 0
    assert course_row["recipe_sha256"] == shared["recipe_sha256"] and course_row["seeds"] == PRESET.confirm_seeds(0)
    assert open_row["confirmation"] is True and open_row["block"] == 1 and open_row["seeds"] == PRESET.confirm_seeds(1)
    assert open_row["recipe_sha256"] == recipes["open"]["recipe_sha256"]
    assert open_row["mean_acc"] == second["tracks"]["open"]["mean_acc"] and open_row["recipe"]["ensemble"] == 2
    assert course_row["blocks_used"] == open_row["blocks_used"] == 2
    assert rows["NetWSAL (confirmation, common setting)"]["seeds"] == PRESET.confirm_seeds(0)
    assert rows["NetWSAL (confirmation block 1, common setting)"]["seeds"] == PRESET.confirm_seeds(1)


def test_a_confirmed_block_re_read_keeps_its_file_as_written(results):
    freeze_recipe("quick", _configs(), results_dir=results)
    study = _confirm(results)
    older = dict(study, wall_time_s=123.0, recipe_commit="an earlier commit")  # written by older code:
    for entry in older["tracks"].values():  # statistics in another format, the same rounds
        entry["vs_reference"] = {p: {k: v for k, v in c.items() if k != "ci95"} for p, c in entry["vs_reference"].items()}
    write_json_atomic(confirmation_path("quick", results), older)
    kept = confirmation_path("quick", results).read_bytes()
    assert _confirm(results) == read_json(confirmation_path("quick", results))
    assert confirmation_path("quick", results).read_bytes() == kept


def test_an_edited_recipe_file_is_refused(results):
    recipe = freeze_recipe("quick", _configs(), results_dir=results)["course"]
    recipe["tracks"]["course"]["config"]["lr"] = 0.01  # edited by hand, hashes left as they were
    write_json_atomic(recipe_path("quick", results), recipe)
    with pytest.raises(ResultsError, match="does not match its own hashes"):
        _confirm(results)


def test_summary_rows_of_the_best_model_carry_the_confirmation(results, capsys):
    import json

    recipes = freeze_recipe("quick", _configs(), results_dir=results)
    assert main(["confirm", "--preset", "quick", "--results-dir", str(results)]) == 0
    assert main(["summary", "--preset", "quick", "--results-dir", str(results), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.split("confirmation blocks used: 2\n")[1])
    for block, track in enumerate(("course", "open")):
        row = rows[f"DigitCompare ({track} track, confirmation)"]
        assert row["confirmation"] is True and row["seeds"] == recipes[track]["seeds"]
        assert row["recipe_sha256"] == recipes[track]["recipe_sha256"] and row["block"] == block
        assert row["blocks_used"] == 2
    assert rows["NetWSAL (confirmation, common setting)"]["seeds"] == recipes["course"]["seeds"]
    assert rows["NetWSAL (confirmation block 1, own setting)"]["seeds"] == recipes["open"]["seeds"]


def _record(val, seeds):
    return {"seeds": seeds, "history": {"val_acc": [[v] for v in val]}}


def test_keep_rule_keeps_a_gain_clearly_above_zero_only():
    from scipy import stats

    seeds = list(range(6))
    base = _record([0.97, 0.96, 0.98, 0.97, 0.975, 0.965], seeds)
    clear = _record([0.975, 0.965, 0.985, 0.975, 0.98, 0.97], seeds)  # +0.5 points on every round
    noisy = _record([0.99, 0.95, 0.985, 0.96, 0.98, 0.965], seeds)  # +0.2 on average, sd 1.0
    rule = keep_rule(base, clear)
    assert rule["clear"] and rule["wins"] == 6 and rule["gain_lower"] == pytest.approx(rule["gain_mean"])
    rule = keep_rule(base, noisy)
    d = np.array([0.02, -0.01, 0.005, -0.01, 0.005, 0.0])
    lower = d.mean() - stats.t.ppf(KEEP_CONFIDENCE, 5) * d.std(ddof=1) / np.sqrt(6)
    assert rule["gain_mean"] == pytest.approx(d.mean()) and rule["gain_lower"] == pytest.approx(lower)
    assert rule["gain_mean"] > 0 and not rule["clear"]
    diverged = _record([0.98, float("nan"), 0.98, 0.98, 0.98, 0.98], seeds)  # a diverged round counts as chance
    assert not keep_rule(base, diverged)["clear"]
    with pytest.raises(ValueError, match="same rounds"):
        keep_rule(base, _record(clear["history"]["val_acc"], [9, 10, 11, 12, 13, 14]))


def test_cpu_minutes_count_the_cpu_time_of_training_when_it_was_measured():
    from lib.best import cpu_minutes_per_round

    old = {"seeds": [1, 2], "wall_time_s": 120.0, "provenance": {"cpu_threads": 2}}  # before cpu_time_s
    assert cpu_minutes_per_round(old) == pytest.approx(2.0)  # wall x threads / rounds
    shared = dict(old, cpu_time_s=90.0)  # a busy machine: the wall time ran longer than the CPU time
    assert cpu_minutes_per_round(shared) == pytest.approx(0.75)
    assert cpu_minutes_per_round([shared, dict(shared, seeds=[3])]) == pytest.approx(1.0)
    assert cpu_minutes_per_round([shared, old]) == pytest.approx((240 + 240) / 60 / 4)  # not all measured
    config = PRESET.config("NetWSAL", "Adam", 1e-3)
    merged = experiments.merge_records([dict(shared, config=config.to_dict(), history={}, diverged_epoch=[None] * 2),
                                        dict(shared, config=config.to_dict(), history={}, diverged_epoch=[None] * 2)])
    assert merged["cpu_time_s"] == 180.0


def test_a_training_run_records_its_cpu_time(tmp_path):
    record = run_cached(PRESET.config("NetWSAL", "Adam", 1e-3), [5], tmp_path)
    assert 0 < record["cpu_time_s"] and record["wall_time_s"] > 0
