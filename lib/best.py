"""Beyond the published results: the best model we can build, chosen on validation pairs only.

Two tracks, each evaluated over the preset's evaluation rounds (the same rounds, hence the same
data, as the main study, so the comparison with NetWSAL is paired):

    course  at most 70,000 trainable parameters and the preset's epochs (25 for `course`);
    open    anything that trains within 5 CPU-minutes per round on this 2-core machine.

The recipe is built by forward selection on short tuning rounds (the grid's seeds): start from
DigitCompare (one shared digit CNN, exact comparison of the two predicted distributions), then
try each step in order and keep it only if it raises the mean validation accuracy. Every tried
step, kept or not, is a row of the ablation table, with its test accuracy recorded beside it
(never used). Writes `results/<preset>/best.json`.
"""
import hashlib
import json
import subprocess
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from lib import stats
from lib.engine import TrainConfig, split_seeds
from lib.experiments import (CACHE_VERSION, CHANCE, PROJECT_ROOT, SUMMARY_FIELDS, ResultsError, default_workers,
                             describe_run, final, get_preset, git_commit, load_evaluation, load_results, merge_records,
                             paired_family, preset_dir, provenance, read_json, run_chunked, run_name,
                             run_path, selection_score, write_if_changed, write_json_atomic)
from lib.stats import count, lr_text, mean_std, minutes, pct, pm, points, seeds_text
from lib.study import Command, Study, markdown_table

COURSE_LIMIT = 70_000  # trainable parameters allowed on the course track
CPU_MINUTES_LIMIT = 5.0  # training time allowed per round on the open track
REFERENCE = "NetWSAL"

# The keep rule of the forward selection. A step is kept only when its paired validation gain
# over the current recipe (same tuning rounds, hence same data) is clearly above zero: the lower
# end of the one-sided KEEP_CONFIDENCE paired t interval of the mean gain is above KEEP_MARGIN.
# "Mean validation accuracy went up" alone kept steps whose gain on 3 rounds was inside their
# noise (+0.20 +- 0.36, +0.30 +- 0.57 points), and the recipe they built held 0.3 points less on
# fresh rounds than on the evaluation rounds. The number of tuning rounds is the preset's
# (`tuning_rounds`); they are trained in chunks of TUNING_CHUNK rounds, one cache file each, so
# the first 3 rounds are the runs cached before the rounds were raised from 3 to 6.
KEEP_CONFIDENCE = 0.90
KEEP_MARGIN = 0.0
TUNING_CHUNK = 3

# The issue's targets for each track's mean test accuracy on the confirmation block (fractions);
# the report says whether each was reached, from confirmation.json.
GOALS = {"course": 0.989, "open": 0.992}

AUGMENT = {"shift": 1.0, "rotate": 12.0, "scale": 0.1}

# (name, track, change of the config): tried in this order, each on top of what was kept before
# (a "model_options" change is merged into the current options).
STEPS = (
    ("re-pair the training digits every epoch", "course", {"repair": True}),
    ("augment: shifts, rotations, scalings", "course", AUGMENT),
    ("cosine learning-rate schedule, lr 0.003", "course", {"lr_schedule": "cosine", "lr": 0.003}),
    ("label smoothing 0.05", "course", {"label_smoothing": 0.05}),
    ("test-time shifts", "course", {"tta": True}),
    ("two convolutions per stage, widths 24/48", "course", {"model_options": {"widths": [24, 48], "depth": 2}}),
    ("augment: shifts, rotations, scalings (deeper CNN)", "course", AUGMENT),
    ("test-time shifts (with augmentation)", "course", {"tta": True}),
    ("dropout 0.4", "course", {"model_options": {"dropout": 0.4}}),
    ("milder augmentation: rotations 8 degrees, scalings 5%", "course", {"rotate": 8.0, "scale": 0.05}),
    ("auxiliary weight 2", "course", {"aux_weight": 2.0}),
    ("widths 28/56, hidden layer 32", "course", {"model_options": {"widths": [28, 56], "dim_hidden": 32}}),
    ("batch 10", "course", {"batch_size": 10}),
    # The open track (CPU_MINUTES_LIMIT per round): an ensemble of 5 costs about 5 course rounds;
    # 50 epochs on top of it would cost about 10, over the limit, so the longer schedule is tried
    # with fewer members instead (about 6 course rounds).
    ("ensemble of 5 models per round", "open", {"ensemble": 5}),
    ("50 epochs with 3 members", "open", {"epochs": 50, "ensemble": 3}),
)
TRACKS = ("course", "open")


def apply_step(config, change):
    """`config` with `change` applied; model options are merged, not replaced."""
    change = dict(change)
    if "model_options" in change:
        change["model_options"] = {**config.model_options, **change["model_options"]}
    return replace(config, **change)


def best_path(preset, results_dir=None):
    return preset_dir(preset, results_dir) / "best.json"


START_OPTIONS = {"widths": [32, 64], "dim_hidden": 64, "dropout": 0.25}  # explicit: part of the cache key


def start_config(preset):
    return preset.config("DigitCompare", "Adam", 1e-3, eval_every=preset.epochs, model_options=dict(START_OPTIONS))


def keep_rule(current, candidate):
    """The paired validation gain of `candidate` over `current` (run records on the same tuning
    rounds) and whether it is clearly above zero (see KEEP_CONFIDENCE)."""
    from scipy import stats

    # final validation accuracies, a diverged round counting as chance (as in the grid)
    x, y = (np.nan_to_num(final(r, "val_acc"), nan=CHANCE) for r in (current, candidate))
    if list(current["seeds"]) != list(candidate["seeds"]):
        raise ValueError("the keep rule compares runs on the same rounds")
    d = y - x
    n = int(d.size)
    mean = float(d.mean())
    if n >= 2 and np.any(d != d[0]):
        lower = float(stats.ttest_rel(y, x, alternative="greater").confidence_interval(KEEP_CONFIDENCE).low)
    else:  # one round, or every difference equal: no spread, the bound is the point
        lower = mean
    return {"n_rounds": n, "gain_mean": mean, "gain_std": float(d.std(ddof=1)) if n > 1 else 0.0,
            "gain_lower": lower, "confidence": KEEP_CONFIDENCE, "margin": KEEP_MARGIN,
            "wins": int((d > 0).sum()), "ties": int((d == 0).sum()), "losses": int((d < 0).sum()),
            "clear": lower > KEEP_MARGIN}


def _row(name, track, kept, config, record, parts):
    val_mean, val_std = mean_std(final(record, "val_acc"))
    test_mean, test_std = mean_std(final(record, "test_acc"))
    runs = [run_name(r) for r in parts]
    return {"step": name, "track": track, "kept": kept, "config": config.to_dict(), "score": selection_score(record),
            "val_acc_mean": val_mean, "val_acc_std": val_std, "test_acc_mean": test_mean, "test_acc_std": test_std,
            "nb_parameters": record["nb_parameters"], "seeds": record["seeds"], "run": runs[0], "runs": runs,
            "cpu_minutes_per_round": cpu_minutes_per_round(parts)}


def cpu_minutes_per_round(records):
    """Training time of one round, in CPU-minutes, over run records (one record, or the chunks of
    one config): the CPU time the training processes used (`cpu_time_s`) / rounds. Records made
    before it was measured count wall time x the threads they ran with, which a machine shared
    with other jobs inflates."""
    records = [records] if isinstance(records, dict) else list(records)
    if all(r.get("cpu_time_s") is not None for r in records):
        cpu_s = sum(r["cpu_time_s"] for r in records)
    else:
        cpu_s = sum(r["wall_time_s"] * (r["provenance"].get("cpu_threads") or 1) for r in records)
    return cpu_s / 60 / sum(len(r["seeds"]) for r in records)


def tune(preset="course", force=False, results_dir=None, progress=True, workers=None):
    """Forward selection on the preset's tuning rounds: returns (ablation rows, {track: config}).

    Each step's rounds run as chunks (TUNING_CHUNK rounds, one cache file each) in `workers`
    processes; a step is kept when it is within its track's limits and passes `keep_rule`."""
    preset = get_preset(preset)
    workers = default_workers(preset.device) if workers is None else workers
    folder = preset_dir(preset, results_dir)
    seeds = list(preset.tuning_seeds)
    chunks = [seeds[i:i + TUNING_CHUNK] for i in range(0, len(seeds), TUNING_CHUNK)]  # one cache file each

    def train(config):
        return run_chunked({"step": config}, chunks, folder, force=force, workers=workers, progress=progress,
                           desc=f"ablation ({preset.name})")["step"]

    current = start_config(preset)
    current_record, parts = train(current)
    ablation = [_row("DigitCompare: shared digit CNN, exact comparison", "course", True, current, current_record, parts)]
    chosen = {}
    for name, track, change in STEPS:
        if track == "open" and not preset.open_steps:
            continue  # not tried: the open track is the course recipe
        candidate = apply_step(current, change)
        record, parts = train(candidate)
        row = _row(name, track, False, candidate, record, parts)
        row["vs_current"] = keep_rule(current_record, record)
        fast = row["cpu_minutes_per_round"] <= CPU_MINUTES_LIMIT  # on either track
        if _within_limits(track, row, preset) and fast and row["vs_current"]["clear"]:
            row["kept"], current, current_record = True, candidate, record
        ablation.append(row)
        if track == "course":
            chosen["course"] = current  # the last course-track config kept
    chosen["open"] = current
    # Curves every epoch up to the preset's epochs for a single model; longer runs and ensembles
    # every 5 epochs (evaluating an ensemble costs, and counts in its CPU-minutes).
    return ablation, {t: replace(c, eval_every=1 if c.epochs <= preset.epochs and c.ensemble == 1 else 5)
                      for t, c in chosen.items()}


def _entry(record, parts, drop=("run",)):
    """describe_run numbers of a config's merged `record`, with its run files (`parts`) and CPU-minutes."""
    entry = describe_run(record)
    entry.update(runs=[run_name(r) for r in parts], cpu_minutes_per_round=cpu_minutes_per_round(parts))
    for key in drop:
        entry.pop(key)
    return entry


def _within_limits(track, entry, preset):
    if track == "course":
        return entry["nb_parameters"] <= COURSE_LIMIT and entry["config"]["epochs"] <= preset.epochs
    return entry["cpu_minutes_per_round"] <= CPU_MINUTES_LIMIT


def best_study(preset="course", force=False, results_dir=None, progress=True, workers=None):
    """Forward selection (`tune`), the frozen recipe (`freeze_recipe`), then the development
    evaluation: both tracks on the preset's evaluation rounds, paired with NetWSAL."""
    preset = get_preset(preset)
    workers = default_workers(preset.device) if workers is None else workers
    folder = preset_dir(preset, results_dir)
    start = time.perf_counter()
    ablation, configs = tune(preset, force=force, results_dir=results_dir, progress=progress, workers=workers)
    recipes = freeze_recipe(preset, configs, ablation, results_dir)
    # the evaluation rounds cut into one chunk per worker, the longer track first so that both
    # cores stay busy until the end
    longest_first = sorted(configs, key=lambda t: -configs[t].epochs * configs[t].ensemble)
    runs = run_chunked({t: configs[t] for t in longest_first}, split_seeds(preset.eval_seeds, workers), folder,
                       force=force, workers=workers, progress=progress, desc=f"best models ({preset.name})")
    reference = load_evaluation(preset, results_dir)["protocols"]["common"]["models"].get(REFERENCE)
    tracks = {}
    for track in TRACKS:
        entry = _entry(*runs[track])
        entry.update(track=track, within_limits=_within_limits(track, entry, preset))
        if reference is not None and reference["seeds"] == entry["seeds"]:
            entry["vs_reference"] = stats.paired(reference["test_acc"], entry["test_acc"], REFERENCE, f"Best ({track})")
        tracks[track] = entry
    study = {
        "kind": "best", "cache_version": CACHE_VERSION, "preset": asdict(preset), "seeds": preset.eval_seeds,
        "evaluation": "development: the preset's evaluation rounds, which the main study also uses; "
                      "the headline numbers are the confirmation block's (confirmation.json)",
        "selection": "forward selection on the final-epoch VALIDATION accuracy of the tuning rounds (validation "
                     "pairs from the training pool): a step is kept when the lower end of the one-sided "
                     f"{100 * KEEP_CONFIDENCE:g} % paired t interval of its gain over the current recipe is above "
                     f"{KEEP_MARGIN:g}; the test set is recorded, never used",
        "tuning_seeds": preset.tuning_seeds, "recipe_sha256": recipes["course"]["recipe_sha256"],
        "track_recipes": {t: r["recipe_sha256"] for t, r in recipes.items()},  # each track's frozen recipe
        "limits": {"course_parameters": COURSE_LIMIT, "course_epochs": preset.epochs,
                   "open_cpu_minutes_per_round": CPU_MINUTES_LIMIT},
        "ablation": ablation, "tracks": tracks, "reference": REFERENCE,
        "wall_time_s": time.perf_counter() - start, "provenance": provenance(runs[longest_first[-1]][1][-1]["device"]),
    }
    return write_if_changed(best_path(preset, results_dir), study, ("preset", "seeds", "ablation", "tracks"))

def load_best(preset="course", results_dir=None):
    return load_results(best_path(preset, results_dir), "best-model", "best", preset)


def track_config(preset="course", track="course", results_dir=None):
    """The TrainConfig of `track` in best.json (ResultsError naming the command when it is missing)."""
    return TrainConfig(**load_best(preset, results_dir)["tracks"][track]["config"])


# ---------------------------------------------------------------------------------------------
# The frozen recipes and their one-shot confirmation blocks
# ---------------------------------------------------------------------------------------------
#
# The evaluation rounds (eval_seeds) are the main study's; the recipe was developed while their test
# numbers were known, so its numbers there are optimistic. Each track's recipe is therefore frozen and
# confirmed on its own:
#   1. `freeze_recipe` writes the track's recipe file (recipe_path): its TrainConfig, the NetWSAL
#      reference configs, a sha256 of each and of the whole (the recipe hash), and its block: the first
#      block of seeds that no cached run, no confirmation and no other track's recipe uses. An unchanged
#      recipe keeps its file, hash and block. The file is committed before step 2.
#   2. `confirm` trains, once, on that block: the track and NetWSAL under the common setting and under
#      its own best setting (paired), and writes the track's confirmation file (confirmation_path). It
#      refuses a recipe file edited after freezing or not committed, a block any other cached run
#      touched, and a block already confirmed with another recipe hash: a changed recipe is confirmed
#      on the next block, never on a seen one. Rerunning it with the same recipe re-reads its runs.
# The course preset's first recipe was frozen for both tracks at once, in best_recipe.json, and
# confirmed on block 0 for both in confirmation.json; the open track has had its own files since.

CONFIRM_CHUNKS = 2  # each config's block rounds run as this many chunks (files), whatever the workers


def _track_file(preset, results_dir, stem, track):
    return preset_dir(preset, results_dir) / (f"{stem}.json" if track == "course" else f"{stem}_{track}.json")


def recipe_path(preset, results_dir=None, track="course"):
    """The file `track`'s recipe is frozen in: best_recipe.json (course), best_recipe_<track>.json."""
    return _track_file(preset, results_dir, "best_recipe", track)


def confirmation_path(preset, results_dir=None, track="course"):
    """The confirmation of `track`'s recipe: confirmation.json (course), confirmation_<track>.json."""
    return _track_file(preset, results_dir, "confirmation", track)


def _frozen(preset, track, results_dir=None):
    """`track`'s frozen recipe (its recipe_path file), None before it is frozen."""
    path = recipe_path(preset, results_dir, track)
    return read_json(path) if path.exists() else None


def config_hash(obj):
    """sha256 of the canonical JSON (sorted keys, no spaces) of a config dict or a dict of them."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _recipe_hash(tracks, references):
    return config_hash({"tracks": {t: tracks[t]["config"] for t in sorted(tracks)},
                        "references": {p: references[p]["config"] for p in sorted(references)}})


def _seeds_in_cache(results_dir):
    """{run file path: its seeds} for every run file of every preset in the results folder."""
    root = Path(results_dir or PROJECT_ROOT / "results")
    return {path: read_json(path).get("seeds", []) for path in sorted(root.glob("*/runs/*.json"))}


def confirmed_blocks(preset, results_dir=None):
    """The ledger: every block confirmed so far, by any track's confirmation file, in block order."""
    ledger = {}
    for track in TRACKS:
        path = confirmation_path(preset, results_dir, track)
        for entry in read_json(path).get("blocks", []) if path.exists() else []:
            ledger.setdefault(entry["block"], entry)
    return [ledger[b] for b in sorted(ledger)]


def used_blocks(preset, results_dir=None):
    """Blocks that a cached run (any preset) or an earlier confirmation has touched."""
    preset = get_preset(preset)
    seen = {s for seeds in _seeds_in_cache(results_dir).values() for s in seeds if s >= preset.confirm_seed}
    blocks = {(s - preset.confirm_seed) // preset.confirm_stride for s in seen}
    return sorted(blocks | {b["block"] for b in confirmed_blocks(preset, results_dir)})


def _unchanged(old, track, config, references):
    """Whether the frozen recipe `old` (None: not frozen yet) holds `track`'s `config` with the same references."""
    return old is not None and old["tracks"][track]["sha256"] == config_hash(config) and \
        {p: e["sha256"] for p, e in old["references"].items()} == {p: e["sha256"] for p, e in references.items()}


def freeze_recipe(preset, configs, ablation=None, results_dir=None):
    """Freeze each track of {track: TrainConfig} (step 1 above); returns {track: its frozen recipe}."""
    preset = get_preset(preset)
    protocols = load_evaluation(preset, results_dir)["protocols"]  # NetWSAL: common setting, its own best setting
    references = {p: protocols[p]["models"][REFERENCE]["config"] for p in ("common", "per_model")}
    references = {p: {"config": c, "sha256": config_hash(c)} for p, c in references.items()}
    old = {t: recipe for t in TRACKS if (recipe := _frozen(preset, t, results_dir)) is not None}
    changed = [t for t in configs if not _unchanged(old.get(t), t, configs[t].to_dict(), references)]
    frozen = {t: old[t] for t in configs if t not in changed}
    taken = set(used_blocks(preset, results_dir)) | {old[t]["block"] for t in old if t not in changed}
    for track in (t for t in TRACKS if t in changed):
        tracks = {track: {"config": configs[track].to_dict(), "sha256": config_hash(configs[track].to_dict())}}
        block = next(b for b in range(len(taken) + 1) if b not in taken)
        rows = [r for r in ablation or [] if r["track"] in ("course", track)]
        recipe = {
            "kind": "best_recipe", "preset": preset.name, "track": track, "recipe_sha256": _recipe_hash(tracks, references),
            "hash": "sha256 of the canonical JSON (sorted keys, separators ',' ':') of {'tracks': {track: config}, "
                    "'references': {protocol: config}}; each config's own sha256 beside it",
            "tracks": tracks, "references": references, "reference": REFERENCE,
            "block": block, "seeds": preset.confirm_seeds(block), "blocks_used_before": sorted(taken),
            "tuning_seeds": preset.tuning_seeds,
            "selection": {"confidence": KEEP_CONFIDENCE, "margin": KEEP_MARGIN, "tuning_chunk": TUNING_CHUNK},
            "kept_steps": [r["step"] for r in rows if r["kept"]],
            "steps_not_tried": [name for name, t, _ in STEPS if t == track and t == "open" and not preset.open_steps],
            "ablation": rows,  # every step of this track tried, with its paired validation gain (vs_current)
            "provenance": provenance(),
        }
        write_json_atomic(recipe_path(preset, results_dir, track), recipe)
        taken.add(block)
        frozen[track] = recipe
    return {t: frozen[t] for t in configs}


def load_recipe(preset="course", results_dir=None, track="course"):
    """The frozen recipe of `track` (recipe_path)."""
    return load_results(recipe_path(preset, results_dir, track), "frozen best-model recipe", "tune", preset)


def _check_committed(path):
    """In the project's own results folder, the frozen recipe must be committed before it is confirmed."""
    path = Path(path).resolve()
    if PROJECT_ROOT not in path.parents:
        return
    # --ignored: an untracked file (ignored or not) is listed too, so only a committed, unchanged one passes
    out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--ignored", "--", str(path)],
                         capture_output=True, text=True, timeout=10)
    if out.returncode == 0 and out.stdout.strip():
        raise ResultsError(f"{path} is not committed: commit the frozen recipe before its confirmation runs")


def confirm(preset="course", results_dir=None, progress=True, workers=None, track="course"):
    """Train `track`'s frozen recipe, once, on its confirmation block (step 2 above; ResultsError
    when it refuses); write and return its confirmation file."""
    preset = get_preset(preset)
    workers = default_workers(preset.device) if workers is None else workers
    folder = preset_dir(preset, results_dir)
    recipe = load_recipe(preset, results_dir, track)
    path = recipe_path(preset, results_dir, track)
    digest = recipe["recipe_sha256"]
    if _recipe_hash(recipe["tracks"], recipe["references"]) != digest or \
            any(config_hash(e["config"]) != e["sha256"] for e in (*recipe["tracks"].values(), *recipe["references"].values())):
        raise ResultsError(f"{path} does not match its own hashes: a frozen recipe is never edited; rerun "
                           f"`python -m lib tune --preset {preset.name}` to freeze a new one")
    if recipe["seeds"] != preset.confirm_seeds(recipe["block"]):
        raise ResultsError(f"{path}: block {recipe['block']} of preset {preset.name} is not seeds {recipe['seeds']}")
    _check_committed(path)
    block, seeds = recipe["block"], recipe["seeds"]
    ledger = confirmed_blocks(preset, results_dir)
    for entry in ledger:
        if entry["block"] == block and entry["recipe_sha256"] != digest:
            raise ResultsError(f"confirmation block {block} (seeds {seeds[0]}-{seeds[-1]}) was already used by recipe "
                               f"{entry['recipe_sha256'][:12]}; recipe {digest[:12]} must be confirmed on the next block: "
                               f"rerun `python -m lib tune --preset {preset.name}` to freeze it there")
    # every config run on the block: the tracks, then the references
    configs = {f"{t} track": TrainConfig(**recipe["tracks"][t]["config"]) for t in ("open", "course")
               if t in recipe["tracks"]}
    configs.update({f"{REFERENCE} ({p})": TrainConfig(**e["config"]) for p, e in recipe["references"].items()})
    chunks = split_seeds(seeds, CONFIRM_CHUNKS)
    own = {run_path(config, chunk, folder).resolve() for config in configs.values() for chunk in chunks}
    for run_file, run_seeds in _seeds_in_cache(results_dir).items():
        if set(run_seeds) & set(seeds) and run_file.resolve() not in own:
            raise ResultsError(f"confirmation block {block} (seeds {seeds[0]}-{seeds[-1]}) was already seen by {run_file}: "
                               f"it cannot confirm anything; freeze the recipe again to move to the next unused block")
    start = time.perf_counter()
    runs = run_chunked(configs, chunks, folder, workers=workers, progress=progress,
                       desc=f"confirmation block {block} ({preset.name})")  # a reference chosen twice runs once
    entries = {label: _entry(record, parts, drop=("run", "curves")) for label, (record, parts) in runs.items()}
    references = {p: entries[f"{REFERENCE} ({p})"] for p in recipe["references"]}
    tracks = {}
    for name in recipe["tracks"]:
        entry = entries[f"{name} track"]
        entry.update(track=name, within_limits=_within_limits(name, entry, preset),
                     sha256=recipe["tracks"][name]["sha256"])
        entry["vs_reference"] = {p: stats.paired(r["test_acc"], entry["test_acc"], f"{REFERENCE} ({p})",
                                                 f"Best ({name})") for p, r in references.items()}
        tracks[name] = entry
    out_path = confirmation_path(preset, results_dir, track)
    old = read_json(out_path) if out_path.exists() else {}
    if old.get("recipe_sha256") == digest and old.get("block") == block:
        if _same_rounds(old, tracks, references):
            return old  # re-read: the file stays as it was written (its statistics in the format of then)
        ledger = old["blocks"]  # the ledger as it was when this block was confirmed
    elif not any(e["block"] == block for e in ledger):
        ledger = sorted(ledger + [{"block": block, "seeds": seeds, "recipe_sha256": digest}], key=lambda e: e["block"])
    study = {
        "kind": "confirmation", "cache_version": CACHE_VERSION, "preset": preset.name,
        "block": block, "seeds": seeds, "recipe_sha256": digest, "blocks": ledger, "blocks_used": len(ledger),
        "tracks": tracks, "references": references,
        "reference": REFERENCE, "recipe_commit": git_commit(),
        "wall_time_s": time.perf_counter() - start, "provenance": provenance(next(iter(runs.values()))[0]["device"]),
    }
    return write_if_changed(out_path, study, ("block", "seeds", "recipe_sha256", "blocks", "tracks", "references"))


def _same_rounds(old, tracks, references):
    """Whether confirmation file `old` holds the same runs and per-round test accuracies as the
    re-read `tracks` and `references`."""
    def rounds(part):
        return {k: (e["runs"], e["test_acc"]) for k, e in part.items()}
    return rounds(old["tracks"]) == rounds(tracks) and rounds(old["references"]) == rounds(references)


def load_confirmation(preset="course", results_dir=None, track="course"):
    """The confirmation file of `track` (confirmation.json for the course track), the headline
    numbers of the best model. Keys:

        block, seeds          the confirmation block (0, 1, ...) and its seeds, one per round
        recipe_sha256         hash of the frozen recipe confirmed (the recipe file)
        blocks, blocks_used   every block confirmed up to this one, by any track ({block, seeds,
                              recipe_sha256}), their count (`blocks_used()`: all tracks' files together)
        tracks[track]         the recipe file's tracks: describe_run numbers (mean_acc, std_acc, test_acc
                              per round, mean_val_acc, nb_parameters, config, ...), runs (files),
                              cpu_minutes_per_round, within_limits, sha256 (the track's config),
                              vs_reference[protocol] (paired statistics of track - NetWSAL on the block:
                              lib.stats.paired: mean_diff, ci95, t_p; files written before it was
                              renamed call t_p paired_t_p)
        references[protocol]  NetWSAL on the same block, "common" and "per_model" (its own best setting)
        wall_time_s, provenance, recipe_commit
    """
    return load_results(confirmation_path(preset, results_dir, track), "confirmation", "confirm", preset)


def blocks_used(preset="course", results_dir=None):
    """How many confirmation blocks have been used, by every track together."""
    return len(confirmed_blocks(preset, results_dir))


def track_confirmations(preset="course", results_dir=None):
    """{track: confirmation file of its current frozen recipe}, for the tracks whose recipe is
    confirmed (a confirmation of an earlier recipe, or of none, is left out)."""
    out = {}
    for track in TRACKS:
        recipe, path = _frozen(preset, track, results_dir), confirmation_path(preset, results_dir, track)
        if recipe is not None and path.exists():
            study = read_json(path)
            if study.get("recipe_sha256") == recipe["recipe_sha256"] and track in study.get("tracks", {}):
                out[track] = study
    return out


def tried_steps(preset="course", results_dir=None):
    """Every step the forward selection tried, in order, from the tracks' frozen recipes (the course
    track's steps, then the open track's), each an ablation row; [] when no recipe is frozen."""
    rows = {}  # step -> its row, the first time it is met
    for track in TRACKS:
        for row in (_frozen(preset, track, results_dir) or {"ablation": []})["ablation"]:
            rows.setdefault(row["step"], row)
    return list(rows.values())


RECIPE_FIELDS = ("shift", "rotate", "scale", "repair", "label_smoothing", "weight_decay", "lr_schedule", "ensemble", "tta")


def summary_rows(preset, results_dir=None):
    """The best model's rows of `experiments.summary`: the headline numbers from each track's
    confirmation block (with NetWSAL on the same block), then the development evaluation (the
    main study's evaluation rounds), each labelled. Empty when neither exists. Each row's `source`
    names where its entry is: [file stem, table, key], e.g. ["confirmation", "tracks", "course"]."""
    def row(entry, track=None, **extra):  # its fields, then `extra`, then a track's recipe
        out = {k: entry[k] for k in SUMMARY_FIELDS if k in entry}
        out.update(extra)
        if track is not None:
            config = entry["config"]
            out.update(track=track, epochs=config["epochs"], cpu_minutes_per_round=entry["cpu_minutes_per_round"],
                       within_limits=entry["within_limits"], recipe={k: config.get(k) for k in RECIPE_FIELDS})
        return out

    preset = get_preset(preset)
    total = blocks_used(preset, results_dir)
    confirmed = [(track, study, confirmation_path(preset, results_dir, track).stem,
                  {"confirmation": True, "seeds": study["seeds"], "block": study["block"],
                   "recipe_sha256": study["recipe_sha256"], "blocks_used": total})
                 for track, study in track_confirmations(preset, results_dir).items()]
    rows = {}
    for track, study, stem, common in confirmed:
        entry = study["tracks"][track]
        rows[f"{entry['model']} ({track} track, confirmation)"] = dict(row(
            entry, track, protocol=f"best, {track} track: frozen recipe, one-shot confirmation block",
            source=[stem, "tracks", track]), **common)
    for k, (_, study, stem, common) in enumerate(confirmed):
        for protocol, entry in study["references"].items():
            name = "common setting" if protocol == "common" else "own setting"
            where = "confirmation" if k == 0 else f"confirmation block {study['block']}"
            rows[f"{entry['model']} ({where}, {name})"] = row(
                entry, protocol=f"{protocol}, on the confirmation block", source=[stem, "references", protocol], **common)
    if best_path(preset, results_dir).exists():
        study = load_best(preset, results_dir)
        for track, entry in study["tracks"].items():
            made_with, frozen = study["track_recipes"][track], _frozen(preset, track, results_dir)
            # best.json written before the track's current recipe was frozen: its rows say so.
            earlier = frozen is not None and made_with != frozen["recipe_sha256"]
            label = "development, earlier recipe" if earlier else "development"
            rows[f"{entry['model']} ({track} track, {label})"] = row(
                entry, track, protocol=f"best, {track} track (forward selection on validation), {label}",
                confirmation=False, seeds=entry["seeds"], recipe_sha256=made_with, source=["best", "tracks", track])
    return rows


# ---------------------------------------------------------------------------------------------
# Figure, report section, notebook part and commands (STUDY, lib.studies)
# ---------------------------------------------------------------------------------------------


def best_plot(best, evaluation=None, confirmations=None, ablation=None):
    """The best-model study in two panels. Left, the tuning: each step's paired VALIDATION gain
    (points) over the recipe kept before it, on the tuning rounds (`vs_current` of the `ablation`
    rows, default best.json's): the mean as a marker, filled where the step was kept, and a bar down
    to the lower end of its one-sided interval (the keep rule: kept when that end is above zero).
    Right: the test accuracy (%) of every round of the confirmation blocks (`confirmations`, {track:
    the confirmation file of its recipe}, when given: per block, NetWSAL under the common setting
    and under its own best setting, then the tracks confirmed on it), else of the development
    rounds (best.json's tracks, beside NetWSAL's from the evaluation when given). A track whose
    config repeats the course track's is drawn once."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from lib.plots import FONT, MIN_FONT, accuracies, dots, figure, model_colors, preset_name

    reference = best["reference"]
    groups = {}  # block (None: the development rounds) -> (references, {track: entry}), paired rounds
    if confirmations:
        for track, c in confirmations.items():
            groups.setdefault(c["block"], (c["references"], {}))[1][track] = c["tracks"][track]
        title = f"Confirmation block{'s' if len(groups) > 1 else ''} " + " and ".join(str(b) for b in groups)
        rounds = len(next(iter(confirmations.values()))["seeds"])
    else:
        references = {}
        if evaluation is not None and evaluation.get("seeds") == best.get("seeds"):
            references = {p: b["models"][reference] for p, b in evaluation["protocols"].items()
                          if reference in b["models"]}
        groups[None] = (references, best["tracks"])
        title, rounds = "Development rounds", len(best.get("seeds", []))

    track_colors = {"course": "tab:cyan", "open": "tab:purple"}
    rows = [r for r in (ablation or best["ablation"]) if r.get("vs_current")]
    fig = figure(0.95 + 0.19 * max(len(rows), 4))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [0.75, 1] if len(groups) < 2 else [0.6, 1.25]})
    for y, row in enumerate(rows):
        vs = row["vs_current"]
        color = track_colors.get(row["track"], "0.4")
        mean, lower = 100 * vs["gain_mean"], 100 * vs["gain_lower"]
        left.errorbar(mean, y, xerr=[[max(mean - lower, 0.0)], [0.0]], fmt="o", color=color, ecolor=color,
                      elinewidth=1.0, capsize=2.5, markersize=5.5, markerfacecolor=color if row["kept"] else "white",
                      markeredgewidth=1.2, zorder=3)
    left.axvline(0.0, color="0.35", linestyle="--", linewidth=0.9, zorder=1)
    left.set_yticks(range(len(rows)), ["+ " + r["step"] for r in rows])
    left.set_ylim(len(rows) - 0.5, -0.5)
    nb_tuning = len(rows[0]["seeds"]) if rows else 0
    level = f"{100 * rows[-1]['vs_current']['confidence']:g} %" if rows else "one-sided"
    left.set_xlabel(f"Validation gain (points), {nb_tuning} rounds", fontsize=FONT)
    left.set_title("Tuning: gain of each step", fontsize=FONT)
    handles = [Line2D([], [], linestyle="none", marker="o", color="0.3", markerfacecolor="0.3", label="kept"),
               Line2D([], [], linestyle="none", marker="o", color="0.3", markerfacecolor="white", label="not kept"),
               Line2D([], [], color="0.3", linewidth=1.0, label=f"down to the lower end ({level}, one-sided)")]
    handles += [Patch(color=c, label=f"{t} track") for t, c in track_colors.items()
                if any(r["track"] == t for r in rows)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=MIN_FONT, frameon=False)

    ref_colors = {"common": "0.55", "per_model": model_colors([reference])[reference]}
    sep = " " if len(groups) > 1 else "\n"  # between the name and the setting or "track" of a tick label
    entries, spans = [], []  # (label, entry, color) of each column; (block, first, last column) of each group
    for block, (references, tracks) in groups.items():
        first = len(entries)
        for protocol, entry in references.items():
            setting = "common" if protocol == "common" else "own"
            entries.append((f"{reference}{sep}{setting}", entry, ref_colors.get(protocol, "0.4")))
        course = tracks.get("course")
        for track, entry in tracks.items():
            if track != "course" and course is not None and entry["config"] == course["config"]:
                continue  # the same recipe (and runs) as the course track on this block
            same = track == "course" and any(t != "course" and e["config"] == entry["config"] for t, e in tracks.items())
            entries.append(("course\n= open" if same else f"{track}{sep}track", entry, track_colors.get(track, "0.4")))
        spans.append((block, first, len(entries) - 1))
    rng = np.random.default_rng(0)
    for x, (label, entry, color) in enumerate(entries):
        dots(right, x, accuracies(entry), color, rng, horizontal=False)
    right.set_xticks(range(len(entries)), [e[0] for e in entries])
    right.set_xlim(-0.6, len(entries) - 0.4)
    for ax, grid in ((left, left.xaxis), (right, right.yaxis)):
        ax.tick_params(which="both", labelsize=MIN_FONT)
        grid.grid(True, linewidth=0.5, alpha=0.5)
        ax.set_axisbelow(True)
    right.set_ylabel("Test accuracy (%)", fontsize=FONT)
    right.set_title(title, fontsize=FONT)
    right.set_xlabel(f"{rounds} rounds, paired (same seeds)" if len(groups) < 2 else f"{rounds} rounds per block, paired",
                     fontsize=FONT)
    if len(groups) > 1:  # each block's entries under its name, a line between blocks; slanted labels
        right.tick_params(axis="x", labelrotation=40)
        for label in right.get_xticklabels():
            label.set(ha="right", rotation_mode="anchor")
        for k, (block, first, last) in enumerate(spans):
            right.text((first + last) / 2, 1.0, f"block {block}", transform=right.get_xaxis_transform(),
                       ha="center", va="bottom", fontsize=MIN_FONT)
            if k:
                right.axvline(first - 0.5, color="0.35", linestyle=":", linewidth=0.9)
        right.set_title(title, fontsize=FONT, pad=12)
    fig.suptitle(f"The best model ({preset_name(best)} preset)", fontsize=FONT + 1)
    return fig


def entries(preset="course", results_dir=None):
    """{row name: (entry, file)} of the summary rows, each found where its `source` says (best.json or
    a track's confirmation file: confirmation.json, confirmation_open.json)."""
    folder, files = preset_dir(preset, results_dir), {}
    out = {}
    for name, row in summary_rows(preset, results_dir).items():
        kind, table, key = row["source"]
        if kind not in files:
            files[kind] = read_json(folder / f"{kind}.json")
        out[name] = (files[kind][table][key], folder / f"{kind}.json")
    return out


def figures(preset="course", results_dir=None):
    if not best_path(preset, results_dir).exists():
        return []
    best, evaluation = load_best(preset, results_dir), load_evaluation(preset, results_dir)
    confirmations, steps = track_confirmations(preset, results_dir), tried_steps(preset, results_dir)
    return [("best", lambda: best_plot(best, evaluation, confirmations or None, steps or None))]


def recipe_text(config):
    """The ingredients of a best-model config, each formatted: {"base": ..., "items": [...]}."""
    items = []
    options = config.get("model_options") or {}
    if options.get("widths"):
        depth = options.get("depth", 1)
        items.append(f"CNN widths {'/'.join(str(w) for w in options['widths'])}"
                     + (f", {depth} convolutions per stage" if depth > 1 else "")
                     + (f", hidden layer {options['dim_hidden']}" if options.get("dim_hidden") else "")
                     + (f", dropout {options['dropout']:g}" if options.get("dropout") else ""))
    if config.get("repair"):
        items.append("re-pairing")
    augment = [f"shifts ≤ {config['shift']:g} px" if config.get("shift") else None,
               f"rotations ≤ {config['rotate']:g}°" if config.get("rotate") else None,
               f"scaling ± {100 * config['scale']:g}%" if config.get("scale") else None]
    if any(augment):
        items.append(", ".join(a for a in augment if a))
    if config.get("label_smoothing"):
        items.append(f"label smoothing {config['label_smoothing']:g}")
    if config.get("weight_decay"):
        items.append(f"weight decay {config['weight_decay']:g}")
    if config.get("ensemble", 1) > 1:
        items.append(f"ensemble of {config['ensemble']}")
    if config.get("tta"):
        items.append("test-time shifts")
    schedule = "cosine" if config.get("lr_schedule") == "cosine" else "constant"
    base = (f"{config['model']}, {config['optimizer']} lr {lr_text(config['lr'])} ({schedule}), batch "
            f"{config['batch_size']}, {config['epochs']} epochs, auxiliary weight {config['aux_weight']:g}")
    return {"base": base, "items": items, "text": "; ".join([base] + items)}


def _from_runs(src, entry):
    """A confirmation.json entry with its per-epoch curves and failed rounds, rebuilt from the run
    files it names (confirmation.json keeps only the final numbers; the failed-round rule of
    lib.experiments.paired_family reads the validation curves). Checked against the file."""
    paths = [src.folder / "runs" / name for name in entry["runs"]]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise src.stale("confirmation", "confirm", f"names run files that are missing ({', '.join(missing)})")
    rebuilt = describe_run(merge_records([read_json(p) for p in paths]))
    same = rebuilt["seeds"] == entry["seeds"] and np.allclose(
        np.array(rebuilt["test_acc"], dtype=float), np.array(entry["test_acc"], dtype=float), equal_nan=True)
    if not same:
        raise src.stale("confirmation", "confirm", "does not match the run files it names")
    return {**entry, "curves": rebuilt["curves"], "diverged_epoch": rebuilt["diverged_epoch"],
            "failed_rounds": rebuilt["failed_rounds"]}


def best_numbers(src):
    """The best model's numbers, the ONE place the report reads its files:

        development   best.json: both tracks on the evaluation's rounds (seen while the recipe was made)
        reference     the reference model's name (NetWSAL)
        recipes       {track: its frozen recipe (recipe_path), with its tuning table and its block}
        confirmations {track: the confirmation of its current recipe (track_confirmations), each
                      entry with its curves rebuilt from its run files}
        blocks        the confirmation blocks used by every track together (confirmed_blocks)
        ablation      every step tried, from the recipes (tried_steps); [] before any is frozen

    None when best.json does not exist. best.json must have been made with the recipe of
    best_recipe.json, and confirmation.json must be that recipe's confirmation."""
    study = src.later("best", "best", ("ablation", "tracks", "limits", "reference"))
    if study is None:
        return None
    recipe, confirmation = src.optional("best_recipe"), src.optional("confirmation")
    if recipe is not None and recipe.get("recipe_sha256") != study.get("recipe_sha256"):
        raise src.stale("best", "best", f"was not made with the frozen recipe of {src.folder / 'best_recipe.json'}")
    if confirmation is not None and (confirmation.get("kind") != "confirmation" or recipe is None
                                     or confirmation.get("recipe_sha256") != recipe["recipe_sha256"]):
        raise src.stale("confirmation", "confirm", "is not the confirmation of the frozen recipe in "
                                                     f"{src.folder / 'best_recipe.json'}")
    recipes = {t: _frozen(src.preset, t, src.results_dir) for t in TRACKS}
    return {"development": study, "reference": study["reference"],
            "recipes": {t: r for t, r in recipes.items() if r is not None},
            "confirmations": {t: dict(c, **{part: {k: _from_runs(src, e) for k, e in c[part].items()}
                                             for part in ("tracks", "references")})
                              for t, c in track_confirmations(src.preset, src.results_dir).items()},
            "blocks": confirmed_blocks(src.preset, src.results_dir), "ablation": tried_steps(src.preset, src.results_dir)}


def best_gains(tracks, references, reference):
    """Each track against the reference under BOTH of its settings on the same rounds: the common
    setting and the reference's own best setting ({"common"/"per_model": entry}). One family, Holm
    (lib.experiments.paired_family); a track whose config repeats an earlier track's shares its
    comparisons (it is the same runs), so the family holds each comparison once."""
    from lib.report import comparison

    table, pairs, same_as = {f"{reference} ({p})": e for p, e in references.items()}, [], {}
    for track, entry in tracks.items():
        earlier = next((t for t in table if t in tracks and tracks[t]["config"] == entry["config"]), None)
        if earlier is not None:
            same_as[track] = earlier
            continue
        table[track] = entry
        pairs += [(f"{reference} ({p})", track, f"{track} vs {reference} ({p})") for p in references]
    out = {}
    for c in paired_family(table, pairs):
        protocol = c["a"][len(reference) + 2:-1]
        out.setdefault(c["b"], {})[protocol] = {**comparison(c), **_setting(references[protocol])}
    for track, earlier in same_as.items():
        out[track] = out[earlier]
    return out


def _setting(e):
    """A reference entry's setting and accuracy, as the report shows them."""
    return {"setting": f"{e['optimizer']} {lr_text(e['lr'])}", "acc": pm(e["mean_acc"], e["std_acc"])}


def _track_numbers(e, gains):
    return {"model": e["model"], "acc": pm(e["mean_acc"], e["std_acc"]), "err": pm(e["mean_err"], e["std_err"]),
            "mean_acc": pct(e["mean_acc"]), "params": count(e["nb_parameters"]), "epochs": e["config"]["epochs"],
            "cpu_min": f"{e['cpu_minutes_per_round']:.2f}", "within_limits": e["within_limits"],
            "recipe": recipe_text(e["config"]), "vs_both": gains, "n_rounds": e["n_rounds"], "diverged": e["diverged_rounds"]}


def section(src):
    """The best model. Headline: the frozen recipe's one-shot confirmation block (confirmation.json),
    with NetWSAL under the common setting and under its own best setting on the same block; beside
    it, labelled, the development evaluation (best.json: the evaluation's rounds). The tuning table
    (each step's paired validation gain and the keep rule) comes from best_recipe.json. Whether each
    track reached its goal (lib.best.GOALS) is a boolean here, so the text picks its words."""
    from lib.report import PUBLISHED

    best = best_numbers(src)
    if best is None:
        return None
    study, reference = best["development"], best["reference"]
    frozen, confirmation = best["recipes"].get("course"), best["confirmations"].get("course")  # the course track's
    published = read_json(PUBLISHED)["best_for_protocol"]
    published_values = [pm(p["mean"], p["pm"], digits=1, scale=1) for p in published["results"]]
    dev_refs = {p: block["models"][reference] for p, block in src.evaluation["protocols"].items()
                if reference in block["models"]}
    dev_gains = best_gains(study["tracks"], dev_refs, reference)
    development = {t: _track_numbers(e, dev_gains.get(t, {})) for t, e in study["tracks"].items()}
    tracks, shown = {}, {}  # the report's numbers and the entry they come from, per track
    for track, e in study["tracks"].items():
        # The headline: the confirmation of the track's current recipe (each file's tracks one Holm
        # family, as when it was written); a track not confirmed yet shows its development numbers.
        c = best["confirmations"].get(track)
        numbers, block = development[track], {"confirmed": False}
        if c is not None:
            e = c["tracks"][track]
            numbers = _track_numbers(e, best_gains(c["tracks"], c["references"], reference).get(track, {}))
            block = {"confirmed": True, "block": c["block"], "block_seeds": seeds_text(c["seeds"]),
                     "block_rounds": len(c["seeds"]),
                     "references": {p: _setting(r) for p, r in c["references"].items()}}
        shown[track] = e
        theirs = []
        for p, value in zip(published["results"], published_values) if e["mean_acc"] is not None else ():
            diff = 100 * e["mean_acc"] - p["mean"]  # percentage points
            theirs.append({"label": p["label"], "value": value, "diff": f"{diff:+.2f}".replace("-", "−"),
                           "size": f"{abs(diff):.2f}", "higher": diff > 0, "within_spread": abs(diff) <= p["pm"]})
        own = best["recipes"].get(track)
        # the development rounds ran this track's current recipe only when best.json has its config
        same_recipe = own is None or own["tracks"][track]["config"] == study["tracks"][track]["config"]
        reached = e["mean_acc"] is not None and e["mean_acc"] >= GOALS[track]
        above_all = bool(theirs) and all(x["higher"] for x in theirs)
        tracks[track] = dict(numbers, published=theirs, above_all_published=above_all,
                             goal=pct(GOALS[track], 1), goal_reached=reached,
                             development=development[track] if same_recipe else None,
                             recipe_hash=(own or study)["recipe_sha256"][:12], **block)
    ablation_rows = best["ablation"] or study["ablation"]
    ablation = []
    for k, r in enumerate(ablation_rows):
        vs = r.get("vs_current")
        ablation.append({
            "step": r["step"], "track": r["track"], "kept": r["kept"], "first": k == 0,
            "val_acc": pm(r["val_acc_mean"], r["val_acc_std"]), "test_acc": pm(r["test_acc_mean"], r["test_acc_std"]),
            "params": count(r["nb_parameters"]), "epochs": r["config"]["epochs"],
            "gain": points(vs["gain_mean"]) if vs else "—", "lower": points(vs["gain_lower"]) if vs else "—",
            "wtl": f"{vs['wins']}/{vs['ties']}/{vs['losses']}" if vs else "—"})
    selection = frozen["selection"] if frozen else {"confidence": KEEP_CONFIDENCE, "margin": KEEP_MARGIN}
    not_tried = best["recipes"].get("open", {}).get("steps_not_tried", [])
    limits, first = study["limits"], ablation_rows[0]
    out = {
        "confirmed": confirmation is not None, "all_confirmed": all(t["confirmed"] for t in tracks.values()),
        "blocks_split": len({t.get("block") for t in tracks.values() if t["confirmed"]}) > 1,
        "ablation": ablation, "kept": [r["step"] for r in ablation if r["kept"] and not r["first"]],
        "nb_steps": len(ablation) - 1, "tracks": tracks, "reference": reference,
        "keep_confidence": f"{100 * selection['confidence']:g}", "keep_margin": f"{selection['margin']:g}",
        # the open track shown as the course track's row: the same config, on the same rounds
        "open_same_as_course": all(shown["open"][k] == shown["course"][k] for k in ("config", "seeds")),
        "steps_not_tried": not_tried, "open_tried": not not_tried,
        "limits": {"params": count(limits["course_parameters"]), "epochs": limits["course_epochs"],
                   "cpu_min": f"{limits['open_cpu_minutes_per_round']:g}"},
        "tuning_rounds": len(first["seeds"]), "tuning_seeds": seeds_text(first["seeds"]),
        "tuning_epochs": first["config"]["epochs"],
        "dev_rounds": len(study["seeds"]), "dev_seeds": seeds_text(study["seeds"]),
        "dev_references": {p: _setting(e) for p, e in dev_refs.items()},
        "recipe_hash": study["recipe_sha256"][:12],  # best_numbers: the frozen recipe's when there is one
        "published": {"source": published["source"], "caveat": published["caveat"],
                      "results": [{"label": p["label"], "recipe": p["recipe"], "value": value}
                                  for p, value in zip(published["results"], published_values)]},
        "wall_min": minutes(study["wall_time_s"]),
    }
    if frozen is not None:  # a confirmation is of this recipe (best_numbers), on its block
        out.update(block=frozen["block"], block_seeds=seeds_text(frozen["seeds"]), block_rounds=len(frozen["seeds"]))
    if confirmation is not None:
        out.update(blocks_used=len(best["blocks"]), blocks=", ".join(str(b["block"]) for b in best["blocks"]),
                   references={p: _setting(e) for p, e in confirmation["references"].items()},
                   confirm_min=minutes(confirmation["wall_time_s"]))
    return out


def notebook(preset="course", results_dir=None):
    """The notebook's part, the report's numbers: the tuning table, the summary rows, the confirmation."""
    from lib.report import sources

    n = section(sources(preset, results_dir))
    if n is None:
        return [f"No best-model results for this preset yet: `python -m lib best --preset {get_preset(preset).name}`."]
    parts = [markdown_table(  # each step's paired validation gain over the recipe kept before it (keep_rule)
        ["step (tried in order)", "track", "validation accuracy (%)", "paired gain (points)",
         f"lower end, one-sided {n['keep_confidence']} %", "W/T/L", "kept", "test accuracy (%), recorded only"],
        [[r["step"], r["track"], r["val_acc"], r["gain"], r["lower"], r["wtl"],
          "start" if r["first"] else "yes" if r["kept"] else "no", r["test_acc"]] for r in n["ablation"]]),
        markdown_table(["model", "test accuracy (%)", "rounds", "seeds", "parameters"],  # as `python -m lib summary`
                       [[name, pm(r["mean_acc"], r["std_acc"]), r["n_rounds"], seeds_text(r["seeds"]),
                         count(r["nb_parameters"])] for name, r in summary_rows(preset, results_dir).items()])]
    if not n["confirmed"]:
        return parts + [f"The frozen recipe is not confirmed yet: `python -m lib confirm --preset {get_preset(preset).name}`."]
    vs = lambda c: f"{c['diff']} {c['ci']}"  # noqa: E731
    return parts + ["\n".join(
        [f"Confirmation blocks used so far: {n['blocks_used']}."]
        + [f"* {track} track, " + (f"block {t['block']} (seeds {t['block_seeds']}, " if t["confirmed"] else
                                   "not confirmed yet (development numbers, ")
           + f"recipe `{t['recipe_hash']}`): {t['acc']} %, vs {n['reference']} common setting "
           f"{vs(t['vs_both']['common'])} points, vs its own best setting {vs(t['vs_both']['per_model'])} points "
           f"(95 % CI, same rounds); goal {t['goal']} % **{'reached' if t['goal_reached'] else 'not reached'}**."
           for track, t in n["tracks"].items()])]


def _tune_command(args):
    ablation, configs = tune(args.preset, force=args.force, results_dir=args.results_dir)
    for row in ablation[1:]:
        gain = row["vs_current"]
        print(f"{'kept' if row['kept'] else '    '} {100 * gain['gain_mean']:+.2f} "
              f"(lower {100 * gain['gain_lower']:+.2f}) {row['step']}")
    for track, recipe in freeze_recipe(args.preset, configs, ablation, results_dir=args.results_dir).items():
        print(f"{track} track: frozen recipe {recipe['recipe_sha256'][:12]}: confirmation block {recipe['block']} "
              f"(seeds {recipe['seeds'][0]}-{recipe['seeds'][-1]})")


def _best_command(args):
    study = best_study(args.preset, force=args.force, results_dir=args.results_dir)
    for track, entry in study["tracks"].items():
        print(f"best ({track} track): {100 * entry['mean_acc']:.2f} +- {100 * entry['std_acc']:.2f} % "
              f"over {entry['n_rounds']} rounds")


def _confirm_command(args):
    for track in TRACKS:  # each track's frozen recipe on its own block (a confirmed one is re-read)
        study = confirm(args.preset, results_dir=args.results_dir, track=track)
        entry = study["tracks"][track]
        print(f"confirmation block {study['block']} ({track} track): {100 * entry['mean_acc']:.2f} +- "
              f"{100 * entry['std_acc']:.2f} % over {entry['n_rounds']} rounds")
    print(f"confirmation blocks used: {blocks_used(args.preset, args.results_dir)}")


STUDY = Study(
    name="best", title="Beyond the published results: the best model",
    files=(("best", "best"), ("best_recipe", "tune"), ("best_recipe_open", "tune"), ("confirmation", "confirm"),
           ("confirmation_open", "confirm")),
    commands=(Command("tune", "forward selection of the best model; freeze its recipe", _tune_command),
              Command("best", "forward selection and evaluation of the best model (two tracks)", _best_command,
                      in_all=True),
              Command("confirm", "the frozen best-model recipe on its unseen confirmation block", _confirm_command,
                      force=False)),
    rows=summary_rows, entries=entries, figures=figures, sections=(("best", section, ("best",)),),
    notebook=notebook)
