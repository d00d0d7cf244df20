"""The best model's frozen recipe and its one-shot confirmation block (quick preset, tmp folders).

Cheap recipes (two epochs, one model per round) stand in for the tuned ones: what is tested is the
protocol (which block, which refusals), not the recipe."""
import shutil
from dataclasses import replace

import numpy as np
import pytest

from lib import experiments
from lib.__main__ import main
from lib.best import (KEEP_CONFIDENCE, config_hash, confirm, confirmation_path, freeze_recipe, keep_rule,
                      load_confirmation, load_recipe, recipe_path, start_config, used_blocks)
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


def _confirm(results):
    return confirm("quick", results_dir=results, progress=False, workers=1)


def test_the_recipe_is_frozen_with_hashes_on_the_first_unused_block(results):
    recipe = freeze_recipe("quick", _configs(), results_dir=results)
    assert recipe["block"] == 0 and recipe["seeds"] == PRESET.confirm_seeds(0) == [9000, 9001, 9002]
    assert recipe["blocks_used_before"] == []
    for entry in (*recipe["tracks"].values(), *recipe["references"].values()):
        assert entry["sha256"] == config_hash(entry["config"])
    assert recipe["tracks"]["course"]["config"] == _configs()["course"].to_dict()
    assert load_recipe("quick", results_dir=results) == recipe
    # Frozen again unchanged: the same file, the same block.
    assert freeze_recipe("quick", _configs(), results_dir=results) == recipe
    # No cached run of the study reaches the confirmation seeds.
    assert not set(PRESET.confirm_seeds(0)) & set(PRESET.grid_seeds + PRESET.eval_seeds + PRESET.tuning_seeds)


def test_confirmation_runs_once_and_is_re_read(results):
    recipe = freeze_recipe("quick", _configs(), results_dir=results)
    study = _confirm(results)
    assert study["block"] == 0 and study["seeds"] == recipe["seeds"] and study["blocks_used"] == 1
    assert study["recipe_sha256"] == recipe["recipe_sha256"]
    assert set(study["tracks"]) == {"course", "open"} and set(study["references"]) == {"common", "per_model"}
    for entry in study["tracks"].values():
        assert entry["seeds"] == recipe["seeds"] and entry["n_rounds"] == len(recipe["seeds"])
        for protocol, reference in study["references"].items():
            assert reference["seeds"] == entry["seeds"]  # paired on the block
            assert entry["vs_reference"][protocol]["n_pairs"] == entry["n_rounds"]
    # Rerun with the same recipe: its own runs are re-read, nothing is trained or refused.
    assert _confirm(results) == study == load_confirmation("quick", results_dir=results)


def test_confirmation_refuses_seeds_the_cache_has_seen(results, capsys):
    freeze_recipe("quick", _configs(), results_dir=results)
    peek = PRESET.config("NetWSAL", "Adam", 1e-3)
    run_cached(peek, [9001], results / "quick")  # someone trained on one of the block's rounds
    with pytest.raises(ResultsError, match="already seen by .*NetWSAL"):
        _confirm(results)
    assert main(["confirm", "--preset", "quick", "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: confirmation block 0") and err.count("\n") == 1
    assert not confirmation_path("quick", results).exists()
    # Freezing again moves the recipe to the next unused block.
    recipe_path("quick", results).unlink()
    assert used_blocks("quick", results) == [0]
    assert freeze_recipe("quick", _configs(), results_dir=results)["block"] == 1


def test_a_different_recipe_is_refused_on_a_used_block(results):
    first = freeze_recipe("quick", _configs(), results_dir=results)
    _confirm(results)
    # A changed recipe written over the frozen one, hashes recomputed, on the block already seen.
    changed = freeze_recipe("quick", _configs(lr=3e-3), results_dir=results)
    assert changed["block"] == 1 and changed["blocks_used_before"] == [0]  # the honest path: the next block
    forged = dict(changed, block=first["block"], seeds=first["seeds"])
    write_json_atomic(recipe_path("quick", results), forged)
    with pytest.raises(ResultsError, match="already used by recipe"):
        _confirm(results)
    # The honest path runs on block 1 and keeps the ledger of both blocks.
    write_json_atomic(recipe_path("quick", results), changed)
    study = _confirm(results)
    assert study["block"] == 1 and study["seeds"] == PRESET.confirm_seeds(1) == [9100, 9101, 9102]
    assert [b["block"] for b in study["blocks"]] == [0, 1] and study["blocks_used"] == 2
    assert [b["recipe_sha256"] for b in study["blocks"]] == [first["recipe_sha256"], changed["recipe_sha256"]]


def test_an_edited_recipe_file_is_refused(results):
    recipe = freeze_recipe("quick", _configs(), results_dir=results)
    recipe["tracks"]["course"]["config"]["lr"] = 0.01  # edited by hand, hashes left as they were
    write_json_atomic(recipe_path("quick", results), recipe)
    with pytest.raises(ResultsError, match="does not match its own hashes"):
        _confirm(results)


def test_summary_rows_of_the_best_model_carry_the_confirmation(results, capsys):
    import json

    recipe = freeze_recipe("quick", _configs(), results_dir=results)
    _confirm(results)
    assert main(["summary", "--preset", "quick", "--results-dir", str(results), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    for track in ("course", "open"):
        row = rows[f"DigitCompare ({track} track, confirmation)"]
        assert row["confirmation"] is True and row["seeds"] == recipe["seeds"]
        assert row["recipe_sha256"] == recipe["recipe_sha256"] and row["block"] == 0
    assert rows["NetWSAL (confirmation, common setting)"]["seeds"] == recipe["seeds"]


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
