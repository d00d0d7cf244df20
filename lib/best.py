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
import time
from dataclasses import asdict, replace

from lib.experiments import (CACHE_VERSION, _mean_std, _selection_score, compare, describe_run,
                             default_workers, final, get_preset, load_evaluation, merge_records, preset_dir, load_results,
                             provenance, run_many, run_name, run_path, write_if_changed)
from lib.engine import split_seeds

COURSE_LIMIT = 70_000  # trainable parameters allowed on the course track
CPU_MINUTES_LIMIT = 5.0  # training time allowed per round on the open track
TUNING_ROUNDS = {"quick": 2}  # rounds of each ablation step; other presets: 3
REFERENCE = "NetWSAL"

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
    ("ensemble of 5 models per round", "open", {"ensemble": 5}),
    ("50 epochs", "open", {"epochs": 50}),
)


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


def _row(name, track, kept, config, record, seeds):
    val_mean, val_std = _mean_std(final(record, "val_acc"))
    test_mean, test_std = _mean_std(final(record, "test_acc"))
    return {"step": name, "track": track, "kept": kept, "config": config.to_dict(), "score": _selection_score(record),
            "val_acc_mean": val_mean, "val_acc_std": val_std, "test_acc_mean": test_mean, "test_acc_std": test_std,
            "nb_parameters": record["nb_parameters"], "seeds": seeds, "run": run_path(config, seeds, "").name,
            "cpu_minutes_per_round": cpu_minutes_per_round(record)}


def cpu_minutes_per_round(record):
    """Training time of one round, in CPU-minutes: wall time x threads / rounds."""
    threads = record["provenance"].get("cpu_threads") or 1
    return record["wall_time_s"] * threads / 60 / len(record["seeds"])


def best_study(preset="course", force=False, results_dir=None, progress=True, workers=None):
    preset = get_preset(preset)
    workers = default_workers(preset.device) if workers is None else workers
    folder = preset_dir(preset, results_dir)
    seeds = [preset.grid_seed + r for r in range(TUNING_ROUNDS.get(preset.name, 3))]
    start = time.perf_counter()

    def train(config):
        return run_many([(config, seeds)], folder, force=force, workers=1, progress=progress,
                        desc=f"ablation ({preset.name})")[0]

    current = start_config(preset)
    record = train(current)
    ablation = [_row("DigitCompare: shared digit CNN, exact comparison", "course", True, current, record, seeds)]
    best_score = ablation[0]["score"]
    chosen = {}
    for name, track, change in STEPS:
        candidate = apply_step(current, change)
        record = train(candidate)
        row = _row(name, track, False, candidate, record, seeds)
        allowed = track == "open" or (row["nb_parameters"] <= COURSE_LIMIT and candidate.epochs <= preset.epochs)
        if allowed and row["score"] > best_score and row["cpu_minutes_per_round"] <= CPU_MINUTES_LIMIT:
            row["kept"], current, best_score = True, candidate, row["score"]
        ablation.append(row)
        if track == "course":
            chosen["course"] = current  # the last course-track config kept
    chosen["open"] = current

    tracks = {}
    # Curves every epoch up to the preset's epochs; longer runs every 5 epochs (evaluating an ensemble costs).
    configs = {t: replace(chosen[t], eval_every=1 if chosen[t].epochs <= preset.epochs else 5)
               for t in ("course", "open")}
    # Each track's rounds are cut into one chunk per worker (rounds are independent), the longer
    # track first, so that both cores stay busy until the end.
    parts = {t: split_seeds(preset.eval_seeds, workers) for t in configs}
    jobs = [(configs[t], chunk) for t in ("open", "course") for chunk in parts[t]]
    records = run_many(jobs, folder, force=force, workers=workers, progress=progress,
                       desc=f"best models ({preset.name})")
    main = load_evaluation(preset, results_dir)["protocols"]["common"]["models"]
    reference = main.get(REFERENCE)
    for track in ("course", "open"):
        config = configs[track]
        chunk_records = [r for (c, _), r in zip(jobs, records) if c is config]
        record = merge_records(chunk_records)
        entry = describe_run(record)
        entry.update(runs=[run_name(r) for r in chunk_records], track=track,
                     cpu_minutes_per_round=cpu_minutes_per_round(record),
                     within_limits=(entry["nb_parameters"] <= COURSE_LIMIT and config.epochs <= preset.epochs)
                     if track == "course" else cpu_minutes_per_round(record) <= CPU_MINUTES_LIMIT)
        entry.pop("run")
        if reference is not None and reference["seeds"] == entry["seeds"]:
            entry["vs_reference"] = compare(reference["test_acc"], entry["test_acc"], REFERENCE, f"Best ({track})")
        tracks[track] = entry
    study = {
        "kind": "best", "cache_version": CACHE_VERSION, "preset": asdict(preset), "seeds": preset.eval_seeds,
        "selection": "forward selection on the mean final-epoch VALIDATION accuracy of short tuning rounds "
                     "(validation pairs from the training pool); the test set is recorded, never used",
        "limits": {"course_parameters": COURSE_LIMIT, "course_epochs": preset.epochs,
                   "open_cpu_minutes_per_round": CPU_MINUTES_LIMIT},
        "ablation": ablation, "tracks": tracks, "reference": REFERENCE,
        "wall_time_s": time.perf_counter() - start, "provenance": provenance(records[-1]["device"]),
    }
    return write_if_changed(best_path(preset, results_dir), study, ("preset", "seeds", "ablation", "tracks"))


def load_best(preset="course", results_dir=None):
    return load_results(best_path(preset, results_dir), "best-model", "best", preset)
