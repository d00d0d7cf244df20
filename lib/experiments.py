"""The study: optimizer x learning-rate grid search, R-round evaluation, and the result cache.

    grid = grid_search("course")            # 5 optimizers x 3 rates x 4 models x 10 rounds
    evaluation = evaluate("course")         # the chosen settings, 20 fresh rounds per model
    summary("course")                       # mean +- std test accuracy per model

Every training call (one configuration, R rounds) is cached as one JSON file under
`results/<preset>/runs/`, named after the model, optimizer, rate and a hash of its config and seeds (and
CACHE_VERSION). A cached run is reused unless `force=True`, so an interrupted grid search resumes
from the cells it finished. Files are written atomically (temporary file, then rename); a file that
cannot be read raises ResultsError naming it, and is never overwritten silently.

Choices are made on VALIDATION pairs (from the training pool, disjoint from the training pairs);
test accuracies are recorded beside them for reference and never used to choose anything. The
grid search writes its choice to `results/<preset>/grid.json`; the evaluation reads it from there
and writes `results/<preset>/evaluation.json`.
"""
import hashlib
import json
import os
import platform
import secrets
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import torch

from lib import stats
from lib.engine import TrainConfig, default_workers, last_measured, train_rounds
from lib.models import model_spec
from lib.pool import run_jobs, shutdown_workers, uses_processes
from lib.study import Command, Study

CACHE_VERSION = 1  # bump when a change of the code changes the numbers a cached run would give
PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = PROJECT_ROOT / "results"
MODELS_002 = ("NetBase", "NetWS", "NetAL", "NetWSAL")


class ResultsError(RuntimeError):
    """A results file is missing, unreadable, or does not match what it should hold."""


@dataclass(frozen=True)
class Preset:
    """One size of the whole study. The grid and the evaluation use disjoint seeds (fresh data)."""

    name: str
    epochs: int  # training epochs of every run
    models: Tuple[str, ...] = MODELS_002
    optimizers: Tuple[str, ...] = ("SGD", "Adam", "Adadelta", "Adagrad", "RMSprop")
    lrs: Tuple[float, ...] = (0.001, 0.005, 0.01)
    grid_rounds: int = 10  # rounds per grid cell
    eval_rounds: int = 20  # rounds per model in the evaluation
    grid_seed: int = 0  # grid round r uses seed grid_seed + r
    eval_seed: int = 1000  # evaluation round r uses seed eval_seed + r
    batch_size: int = 25
    aux_weight: float = 1.0
    nb_train: int = 1000
    nb_val: int = 1000
    nb_test: int = 1000
    grid_eval_every: int = 5  # grid cells evaluate val/test every k epochs (and at the last)
    device: str = "auto"
    tuning_rounds: int = 6  # rounds of each best-model selection step (seeds grid_seed + r, see lib/best.py)
    open_steps: bool = True  # try the best model's open-track steps (False: the open track is the course recipe)
    confirm_seed: int = 9000  # confirmation block b uses seeds confirm_seed + confirm_stride * b + r, r < eval_rounds
    confirm_stride: int = 100  # no cached run of the study uses seeds at or above confirm_seed
    # Settings of the later studies, required of every preset (a preset without one cannot be made):
    seed_tuning: Tuple = field(kw_only=True)  # lib.seed_study: (epochs of a tuning run, rounds, candidates per stage or None = all)
    sizes: Tuple[int, ...] = field(kw_only=True)  # lib.when_study: training pairs of the size study
    aux_weights: Tuple[float, ...] = field(kw_only=True)  # lib.when_study: auxiliary weights of the aux study

    def config(self, model, optimizer, lr, eval_every=1, **overrides):
        """The TrainConfig of one run of this preset; `overrides` replace any other field."""
        return TrainConfig(**dict(model=model, optimizer=optimizer, lr=lr, batch_size=self.batch_size,
                                  epochs=self.epochs, aux_weight=self.aux_weight, nb_train=self.nb_train,
                                  nb_val=self.nb_val, nb_test=self.nb_test, eval_every=eval_every,
                                  device=self.device) | overrides)

    @property
    def grid_seeds(self):
        return [self.grid_seed + r for r in range(self.grid_rounds)]

    @property
    def eval_seeds(self):
        return [self.eval_seed + r for r in range(self.eval_rounds)]

    @property
    def tuning_seeds(self):
        return [self.grid_seed + r for r in range(self.tuning_rounds)]

    def confirm_seeds(self, block):
        """The seeds of confirmation block `block` (0, 1, ...): one per evaluation round."""
        return [self.confirm_seed + self.confirm_stride * block + r for r in range(self.eval_rounds)]


SIZES = (125, 250, 500, 1000, 2000, 4000)  # the offline pool holds at most 4000 training + 1000 validation pairs
AUX_WEIGHTS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)
PRESETS = {
    # Seconds: the whole pipeline on small data, for tests and CI.
    "quick": Preset("quick", epochs=2, optimizers=("SGD", "Adam"), lrs=(0.001, 0.01), grid_rounds=2,
                    eval_rounds=3, nb_train=100, nb_val=100, nb_test=100, grid_eval_every=1, tuning_rounds=2,
                    seed_tuning=(1, 2, 1), sizes=(50, 100), aux_weights=(0.0, 1.0)),
    # The course text's budget: 25 epochs. The committed results use this preset.
    # The open-track steps were first left out (open_steps=False: the open track was the course
    # recipe, confirmed on block 0); they were then tuned and confirmed on their own block.
    "course": Preset("course", epochs=25, seed_tuning=(10, 3, None), sizes=SIZES, aux_weights=AUX_WEIGHTS),
    # The seed report's budget (002): 100 epochs.
    "seed002": Preset("seed002", epochs=100, grid_eval_every=10, seed_tuning=(10, 3, None), sizes=SIZES,
                      aux_weights=AUX_WEIGHTS),
}
DEFAULT_PRESET = "course"


def get_preset(preset):
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}") from None


# ----------------------------------------------------------------------------- files


def write_if_changed(path, obj, keys):
    """Write `obj` unless the file already holds the same values under `keys`: a rerun that only
    read cached runs keeps the file, with its original timings and provenance, as it is. A preset
    compares on the fields the file recorded: a field added to `Preset` later (a setting of
    another study) does not make an older file stale."""
    path = Path(path)
    if path.exists():
        try:
            old = read_json(path)
        except ResultsError:
            old = None

        def same(key):
            new = json.loads(json.dumps(obj[key]))
            if key == "preset" and isinstance(old.get(key), dict) and isinstance(new, dict):
                return all(new.get(field) == value for field, value in old[key].items())
            return old.get(key) == new

        if old is not None and all(same(k) for k in keys):
            return old
    write_json_atomic(path, obj)
    return obj


def load_results(path, what, command, preset):
    """Read a study's results file, or say which command writes it."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"no {what} results at {path}: run `python -m lib {command} --preset "
                           f"{get_preset(preset).name}` first")
    return read_json(path)


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise ResultsError(f"results file {path} cannot be read ({error}). It was left as it is: delete this "
                           "one file and rerun the command, which recomputes only what it held.") from None


@contextmanager
def atomic_path(path):
    """A temporary path beside `path` to write to, renamed onto `path` when the block ends and removed
    if it raises: a crash never leaves half a file (JSON, figure or PDF). The file gets the usual
    permissions (0666 less the umask), like any file the user writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path, obj):
    """`obj` as JSON in `path`, written atomically (NaN refused: a results file holds null instead)."""
    text = json.dumps(obj, indent=1, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_writable(folder, what="results"):
    """Create `folder` if needed and check that a file can be written in it, before anything long
    runs; raise ResultsError in one line otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ResultsError(f"cannot write the {what} into {folder}: {error.strerror or error}. "
                           "Choose another folder or fix its permissions; nothing was run.") from None
    return folder


UNSAVED_DIR = Path(tempfile.gettempdir()) / "ee559-unsaved-results"


def save_or_keep(path, record):
    """Write a run record to `path`; if that fails, write it under UNSAVED_DIR instead and raise a
    ResultsError that says where it is, so a finished run is never silently lost."""
    try:
        write_json_atomic(path, record)
    except OSError as error:
        rescue = UNSAVED_DIR / Path(path).name
        try:
            write_json_atomic(rescue, record)
        except OSError:
            raise ResultsError(f"cannot write {path} ({error.strerror or error}), nor a copy in {UNSAVED_DIR}: "
                               "the run is lost") from None
        raise ResultsError(f"cannot write {path} ({error.strerror or error}); the finished run was saved to "
                           f"{rescue}: copy it to {Path(path).parent} to use it") from None


def git_commit():
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no", "lib"],
                               capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+uncommitted-lib-changes" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device=None):
    """Where and with what a result was computed (on a GPU: its name and the CUDA version too)."""
    from lib.data import pool_info

    on_gpu = device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available()
    return {
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device) if device is not None else None,
        "cpu_threads": torch.get_num_threads(),
        **({"gpu": torch.cuda.get_device_name(torch.device(device)), "cuda": torch.version.cuda} if on_gpu else {}),
        "data_pools": pool_info(),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_key(config: TrainConfig, seeds):
    blob = json.dumps({"cache_version": CACHE_VERSION, "config": config.key_dict(), "seeds": list(seeds)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def preset_dir(preset, results_dir=None):
    """Folder of one preset's results: grid.json, evaluation.json and runs/."""
    return Path(results_dir or RESULTS_DIR) / get_preset(preset).name


def run_path(config, seeds, folder):
    name = f"{config.model}_{config.optimizer}_lr{config.lr:g}_{run_key(config, seeds)}.json"
    return Path(folder) / "runs" / name


RUN_FIELDS = ("config", "seeds", "history", "diverged_epoch", "wall_time_s", "device", "nb_parameters")


def run_cached(config: TrainConfig, seeds: Sequence[int], folder, force=False, progress=False):
    """Train `config` on `seeds` (all rounds at once), or read the cached result from `folder`/runs.

    Returns the run record (config, seeds, per-round per-epoch history, provenance)."""
    config.validate()
    path = run_path(config, seeds, folder)
    if path.exists() and not force:
        record = read_json(path)
        if record.get("key") != run_key(config, seeds):
            raise ResultsError(f"results file {path} holds key {record.get('key')!r}, not {run_key(config, seeds)!r}: "
                               "it does not belong here. Delete this one file and rerun the command.")
        missing = [k for k in RUN_FIELDS if k not in record]
        if missing:
            raise ResultsError(f"results file {path} has no {', '.join(missing)}: it is incomplete. Delete this one "
                               "file and rerun the command, which recomputes only that run.")
        return record
    result = train_rounds(config, seeds, progress=progress)
    record = {"kind": "run", "cache_version": CACHE_VERSION, "key": run_key(config, seeds), **result.to_dict(),
              "provenance": provenance(result.device)}
    save_or_keep(path, record)
    return record


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during run_many: the workers are stopped; `saved` of `total` runs are on disk in `folder`."""

    def __init__(self, saved, total, folder):
        super().__init__(f"{saved} of {total} runs are saved in {folder}")
        self.saved, self.total, self.folder = saved, total, folder


def run_many(jobs, folder, force=False, workers=1, progress=False, desc="runs"):
    """run_cached for each (config, seeds) job, through the worker pool (`lib.pool.run_jobs`: in
    `workers` processes on the CPU, here on a GPU); records in job order.

    Every finished run is on disk before the next starts, so an interrupted call loses at most
    the runs in progress. Ctrl-C stops the workers at once and raises Interrupted (a
    KeyboardInterrupt) saying how many runs are saved; rerunning resumes from them."""
    jobs = list(jobs)
    records = [None] * len(jobs)
    todo = [i for i, (config, seeds) in enumerate(jobs) if force or not run_path(config, seeds, folder).exists()]
    if todo:
        check_writable(Path(folder) / "runs")
        from lib.data import find_mnist

        find_mnist()  # here, once: no worker starts without data, none races another to download it
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="run", disable=not (progress and todo))
    try:
        for i in sorted(set(range(len(jobs))) - set(todo)):  # cached runs are read here, without starting processes
            records[i] = run_cached(jobs[i][0], jobs[i][1], folder)
        epoch_bars = progress and not uses_processes([jobs[i] for i in todo], workers)  # workers draw no bar

        def done(k, record):
            records[todo[k]] = record
            bar.update(1)

        run_jobs(run_cached, [(config, seeds, folder, force, epoch_bars and f"{config.model} {config.optimizer} "
                               f"{config.lr:g}") for config, seeds in (jobs[i] for i in todo)], workers, done)
        shutdown_workers()  # the workers exit with the study: no idle process keeps its memory
    except KeyboardInterrupt:
        for tmp in (Path(folder) / "runs").glob(".*.json.*.tmp"):  # half files of stopped writers (none is left)
            tmp.unlink(missing_ok=True)
        saved = sum(r is not None for r in records)
        if not force:  # a worker may have written its run just before it was stopped
            saved = sum(run_path(c, s, folder).exists() for c, s in jobs)
        raise Interrupted(saved, len(jobs), Path(folder) / "runs") from None
    finally:
        bar.close()
    return records


def run_name(record):
    """File name of the cache file that holds a run record."""
    return run_path(TrainConfig(**record["config"]), record["seeds"], "").name


def merge_records(records):
    """One record from runs of one config on consecutive chunks of seeds (see split_seeds).

    Rounds are independent, so the merged record is what one run on all the seeds would hold;
    `wall_time_s` is the sum of the parts' training times, `parts` names their files."""
    records = list(records)
    if len(records) == 1:
        return records[0]
    first = records[0]
    for record in records[1:]:
        if record["config"] != first["config"]:
            raise ValueError("merge_records needs runs of one config; got "
                             f"{first['config']} and {record['config']}")
    cpu = [r.get("cpu_time_s") for r in records]
    return dict(first, seeds=[s for r in records for s in r["seeds"]],
                history={m: [row for r in records for row in r["history"][m]] for m in first["history"]},
                diverged_epoch=[d for r in records for d in r["diverged_epoch"]],
                wall_time_s=sum(r["wall_time_s"] for r in records),
                cpu_time_s=None if None in cpu else sum(cpu),  # measured for every part, or not at all
                key=None, parts=[run_name(r) for r in records])  # key: no single cache file holds it


def run_chunked(configs, chunks, folder, force=False, workers=1, progress=False, desc="runs"):
    """Each config of {label: TrainConfig} on every chunk of seeds (one cached run, one file, per
    chunk), all through one `run_many` (configs with the same runs share them); per label, (its
    chunks' records merged by `merge_records`, the chunks' records)."""
    jobs = {}  # run file -> (config, seeds)
    for config in configs.values():
        for chunk in chunks:
            jobs.setdefault(run_path(config, chunk, folder), (config, chunk))
    records = dict(zip(jobs, run_many(list(jobs.values()), folder, force=force, workers=workers, progress=progress,
                                      desc=desc)))
    parts = {label: [records[run_path(config, chunk, folder)] for chunk in chunks] for label, config in configs.items()}
    return {label: (merge_records(p), p) for label, p in parts.items()}


def history(record, metric):
    """(R, epochs) array of a metric of a run record (or of an evaluated entry's curves), NaN where missing."""
    return stats.nan_array((record["history"] if "history" in record else record["curves"])[metric])


def final(record, metric):
    """(R,) values at the last epoch where the metric was measured (NaN for a diverged round), of a run
    record or an evaluated entry."""
    return last_measured(history(record, metric))


def diverged_mask(record):
    """(R,) bool: the rounds the engine flagged as diverged (non-finite or exploding training loss)."""
    return np.array([d is not None for d in record["diverged_epoch"]], dtype=bool)


# ----------------------------------------------------------------------------- grid search

CHANCE = 0.5  # a diverged round counts as chance-level validation accuracy when choosing


def grid_path(preset, results_dir=None):
    return preset_dir(preset, results_dir) / "grid.json"


def evaluation_path(preset, results_dir=None):
    return preset_dir(preset, results_dir) / "evaluation.json"


def selection_score(record):
    val = final(record, "val_acc")
    return float(np.where(np.isnan(val), CHANCE, val).mean())


def model_specs(models, preset):
    """The names of `models` (registered names or classes; default: the preset's) and {name: arch}
    (see lib.models.model_spec: "" for the library's architecture of that name)."""
    specs = [model_spec(m) for m in (models or preset.models)]
    return tuple(name for name, _ in specs), dict(specs)


def variant(arch):
    """The entry that marks a result of a variant architecture (none for the library's)."""
    return {"arch": arch} if arch else {}


def grid_search(preset=DEFAULT_PRESET, force=False, results_dir=None, progress=True, models=None, workers=None):
    """Every model x optimizer x learning rate of the preset, `grid_rounds` rounds each.

    Writes and returns the grid summary: one entry per cell, each model's own best setting, and the
    common setting that maximises the mean validation accuracy over the models (the seed report
    chose one optimizer and rate for all four models). `models`: names or classes (a class defined
    in a notebook trains as itself, see lib.models.model_spec). `workers`: training processes
    (default: one per CPU core on the CPU, see default_workers).
    """
    preset = get_preset(preset)
    models, archs = model_specs(models, preset)
    cells = [(m, o, lr) for m in models for o in preset.optimizers for lr in preset.lrs]
    configs = [preset.config(m, o, lr, eval_every=preset.grid_eval_every, arch=archs[m]) for m, o, lr in cells]
    start = time.perf_counter()
    workers = default_workers(preset.device) if workers is None else workers
    records = run_many([(c, preset.grid_seeds) for c in configs], preset_dir(preset, results_dir), force=force,
                       workers=workers, progress=progress, desc=f"grid search ({preset.name})")
    entries = []
    for (model, optimizer, lr), config, record in zip(cells, configs, records):
        val_mean, val_std = stats.mean_std(final(record, "val_acc"))
        test_mean, test_std = stats.mean_std(final(record, "test_acc"))
        entries.append({
            "model": model, "optimizer": optimizer, "lr": lr, "run": run_path(config, preset.grid_seeds, "").name,
            "score": selection_score(record), "val_acc_mean": val_mean, "val_acc_std": val_std,
            "test_acc_mean": test_mean, "test_acc_std": test_std,
            "diverged_rounds": int(diverged_mask(record).sum()),
            "wall_time_s": record["wall_time_s"], **variant(archs[model]),
        })

    per_model = {}
    for model in models:
        best = max((e for e in entries if e["model"] == model), key=lambda e: e["score"])  # first of equals
        per_model[model] = {"optimizer": best["optimizer"], "lr": best["lr"], "val_acc_mean": best["val_acc_mean"],
                            **variant(archs[model])}
    settings = [(o, lr) for o in preset.optimizers for lr in preset.lrs]

    def common_score(setting):
        return float(np.mean([e["score"] for e in entries if (e["optimizer"], e["lr"]) == setting]))

    common = max(settings, key=common_score)
    grid = {
        "kind": "grid", "cache_version": CACHE_VERSION, "preset": asdict(preset),
        "seeds": preset.grid_seeds,
        "selection": "mean over rounds of the final-epoch VALIDATION accuracy (validation pairs from the "
                     f"training pool; a diverged round counts as {CHANCE}); the test set is recorded, never used",
        "cells": entries,
        "choice": {"common": {"optimizer": common[0], "lr": common[1], "mean_val_acc": common_score(common)},
                   "per_model": per_model},
        "training_time_s": float(sum(e["wall_time_s"] for e in entries)),
        "wall_time_s": time.perf_counter() - start, "workers": workers,
        "provenance": provenance(records[-1]["device"]),
    }
    return write_if_changed(grid_path(preset, results_dir), grid, ("preset", "seeds", "cells", "choice"))


def load_grid(preset=DEFAULT_PRESET, results_dir=None):
    return load_results(grid_path(preset, results_dir), "grid search", "grid", preset)


# ----------------------------------------------------------------------------- evaluation

CURVES = ("train_loss", "train_acc", "val_acc", "test_acc")


def describe_run(record):
    """Per-model numbers of one evaluation run (R rounds): final and per-epoch."""
    config, test, diverged = record["config"], final(record, "test_acc"), diverged_mask(record)
    test_hist = history(record, "test_acc")
    entry = {"model": config["model"], "optimizer": config["optimizer"], "lr": config["lr"], "config": config,
             "seeds": record["seeds"], "run": None, "nb_parameters": record["nb_parameters"],
             "n_rounds": int(np.sum(~np.isnan(test) & ~diverged)), "diverged_rounds": int(diverged.sum())}
    max_over_epochs = np.nanmax(np.where(np.isnan(test_hist), -np.inf, test_hist), axis=1)
    for name, values in (("acc", test), ("err", 1 - test), ("val_acc", final(record, "val_acc")),
                         ("max_acc_over_epochs", max_over_epochs)):
        entry[f"mean_{name}"], entry[f"std_{name}"] = stats.mean_std(values)
    entry.update(test_acc=[None if np.isnan(v) else float(v) for v in test], wall_time_s=record["wall_time_s"],
                 curves={m: record["history"][m] for m in CURVES}, diverged_epoch=record["diverged_epoch"])
    entry["failed_rounds"] = failed_rounds(entry)
    digit = final(record, "test_digit_acc")
    if not np.all(np.isnan(digit)):
        entry["mean_digit_acc"], entry["std_digit_acc"] = stats.mean_std(digit)
    return entry


def failed_rounds(entry):
    """The failed rounds of an evaluated entry (lib.stats.failure_reason, on VALIDATION accuracy):
    [{"round": r, "seed": s, "reason": ..., "val_acc": ..., "train_acc": ...}]."""
    val, train = final(entry, "val_acc"), final(entry, "train_acc")
    diverged = entry.get("diverged_epoch")
    reasons = stats.failure_reason(val, diverged)
    return [{"round": r, "seed": entry["seeds"][r], "reason": why,
             "val_acc": None if np.isnan(val[r]) else float(val[r]),
             "train_acc": None if np.isnan(train[r]) else float(train[r])}
            for r, why in enumerate(reasons) if why is not None]


def paired_family(table, pairs, metric="test_acc"):
    """The paired comparisons of one family [(a, b, question)] between entries of `table` (same
    seeds), Holm-corrected over the family, each with its verdict; each also carries the same
    statistics over the rounds where neither model failed (`without_failed`, its own family)."""
    out, healthy = [], []
    for a, b, question in pairs:
        if a not in table or b not in table:
            continue
        ea, eb = table[a], table[b]
        if ea["seeds"] != eb["seeds"]:
            raise ValueError(f"{a} and {b} were not trained on the same seeds: their rounds are not paired")
        failed = {r["round"] for e in (ea, eb) for r in failed_rounds(e)}
        keep = [r not in failed for r in range(len(ea["seeds"]))]
        out.append(dict(stats.paired(ea[metric], eb[metric], a, b), question=question))
        healthy.append(stats.paired(ea[metric], eb[metric], a, b, keep=keep))
    stats.adjust_family(out)
    stats.adjust_family(healthy)
    for c, h in zip(out, healthy):
        c["without_failed"] = {k: v for k, v in h.items() if k not in ("a", "b")}
    return out


COMPARISONS = (  # (without, with, what it measures)
    ("NetBase", "NetWS", "weight sharing, main loss only"),
    ("NetAL", "NetWSAL", "weight sharing, with auxiliary loss"),
    ("NetBase", "NetAL", "auxiliary loss, separate branches"),
    ("NetWS", "NetWSAL", "auxiliary loss, shared branches"),
    ("NetBase", "NetWSAL", "both"),
)


STATISTICS = ("paired over rounds (same seeds, same data): mean difference with its 95% t interval, median, "
              "wins/ties/losses, paired t-test and Wilcoxon signed-rank test, Holm-corrected over each "
              "protocol's comparisons; verdict by lib.stats.verdict; failed rounds by lib.stats.failure_reason "
              "(on validation accuracy); `without_failed`: the same over the rounds where neither model failed")


def evaluate(preset=DEFAULT_PRESET, force=False, results_dir=None, progress=True, models=None, workers=None):
    """Train each model `eval_rounds` times on fresh data with the settings chosen by the grid.

    Two protocols: "common" (one optimizer and rate for all models, as the seed report) and
    "per_model" (each model's own best). A run shared by both is trained once (cache).
    """
    preset = get_preset(preset)
    grid = load_grid(preset, results_dir)
    models, archs = model_specs(models, preset)
    missing = [m for m in models if m not in grid["choice"]["per_model"]]
    if missing:
        raise ResultsError(f"the grid search of preset {preset.name} has no result for {missing}: rerun it")
    other = [m for m in models if grid["choice"]["per_model"][m].get("arch", "") != archs[m]]
    if other:
        raise ResultsError(f"the grid search of preset {preset.name} chose the settings of {other} for another "
                           "architecture of that name: rerun it with these models")
    start = time.perf_counter()
    settings = {"common": {m: grid["choice"]["common"] for m in models},
                "per_model": {m: grid["choice"]["per_model"][m] for m in models}}
    jobs = sorted({(m, s["optimizer"], s["lr"]) for protocol in settings.values() for m, s in protocol.items()},
                  key=lambda j: (models.index(j[0]), j[1], j[2]))
    configs = [preset.config(m, o, lr, eval_every=1, arch=archs[m]) for m, o, lr in jobs]
    workers = default_workers(preset.device) if workers is None else workers
    runs = run_many([(c, preset.eval_seeds) for c in configs], preset_dir(preset, results_dir), force=force,
                    workers=workers, progress=progress, desc=f"evaluation ({preset.name})")
    records = {job: describe_run(record) | {"run": run_path(config, preset.eval_seeds, "").name}
               for job, config, record in zip(jobs, configs, runs)}
    device = runs[-1]["device"]
    protocols = {}
    for protocol, chosen in settings.items():
        table = {m: records[m, s["optimizer"], s["lr"]] for m, s in chosen.items()}
        protocols[protocol] = {"models": table, "comparisons": paired_family(table, COMPARISONS)}
    evaluation = {
        "kind": "evaluation", "cache_version": CACHE_VERSION, "preset": asdict(preset), "seeds": preset.eval_seeds,
        "grid_choice": grid["choice"], "protocols": protocols,
        "statistics": STATISTICS,
        "training_time_s": float(sum(e["wall_time_s"] for e in records.values())),
        "wall_time_s": time.perf_counter() - start, "workers": workers, "provenance": provenance(device),
    }
    return write_if_changed(evaluation_path(preset, results_dir), evaluation,
                            ("preset", "seeds", "grid_choice", "protocols"))


def load_evaluation(preset=DEFAULT_PRESET, results_dir=None):
    return load_results(evaluation_path(preset, results_dir), "evaluation", "evaluate", preset)


SUMMARY_FIELDS = ("mean_acc", "std_acc", "mean_err", "std_err", "n_rounds", "diverged_rounds", "optimizer", "lr",
                  "nb_parameters", "mean_val_acc", "mean_max_acc_over_epochs", "std_max_acc_over_epochs", "mean_digit_acc")


def summary(preset=DEFAULT_PRESET, results_dir=None):
    """One entry per evaluated model (accuracies as fractions), read from the results files: the
    rows of every study of lib.studies, in its order (those whose files exist)."""
    from lib import studies

    return {name: row for study in studies.STUDIES if study.rows
            for name, row in study.rows(preset, results_dir).items()}


def summary_rows(preset=DEFAULT_PRESET, results_dir=None):
    """The four 002 models (protocol "common": the grid's common choice, with each model's own best
    beside it)."""
    evaluation = load_evaluation(preset, results_dir)
    out = {}
    for model, entry in evaluation["protocols"]["common"]["models"].items():
        row = {k: entry[k] for k in SUMMARY_FIELDS if k in entry}
        row["protocol"] = "common"
        own = evaluation["protocols"]["per_model"]["models"][model]
        row["own_choice"] = {k: own[k] for k in ("optimizer", "lr", "mean_acc", "std_acc")}
        out[model] = row
    return out


def run_study(preset=DEFAULT_PRESET, force=False, results_dir=None, progress=True, workers=None):
    """Grid search, then evaluation: everything the figures and the report read."""
    grid = grid_search(preset, force=force, results_dir=results_dir, progress=progress, workers=workers)
    evaluation = evaluate(preset, force=force, results_dir=results_dir, progress=progress, workers=workers)
    return grid, evaluation


# ------------------------ the main study in the registry (lib.studies): its commands, rows, figures and report sections


def _grid_command(args):
    grid = grid_search(args.preset, force=args.force, results_dir=args.results_dir)
    common = grid["choice"]["common"]
    print(f"grid search ({args.preset}): {len(grid['cells'])} cells, {grid['training_time_s']:.0f} s of training; "
          f"common choice {common['optimizer']} lr={common['lr']:g} "
          f"(mean validation accuracy {100 * common['mean_val_acc']:.2f} %)")


def _evaluate_command(args):
    evaluation = evaluate(args.preset, force=args.force, results_dir=args.results_dir)
    print(f"evaluation ({args.preset}): {evaluation['training_time_s']:.0f} s of training")


def _entries(preset, results_dir=None):
    models = load_evaluation(preset, results_dir)["protocols"]["common"]["models"]
    return {m: (entry, evaluation_path(preset, results_dir)) for m, entry in models.items()}


def _figures(preset, results_dir=None):
    from lib import plots

    return plots.figures_of(load_grid(preset, results_dir), load_evaluation(preset, results_dir))


def _report_section(name, src):
    """The main study's report sections are lib.report's own (imported when the report is built)."""
    from lib import report

    return getattr(report, f"section_{name}")(src)


STUDY = Study(
    name="main", files=(("grid", "grid"), ("evaluation", "evaluate")),
    commands=(Command("grid", "optimizer x learning-rate grid search", _grid_command, in_all=True),
              Command("evaluate", "R-round evaluation with the grid's choice", _evaluate_command, in_all=True)),
    rows=summary_rows, entries=_entries, figures=_figures,
    sections=tuple((name, partial(_report_section, name), figures) for name, figures in (
        ("meta", ("grid", "boxplot", "overfitting", "curves")), ("data", ()), ("models", ()), ("training", ()),
        ("grid", ()), ("results", ()), ("overfitting", ()), ("published", ()))))
