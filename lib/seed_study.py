"""Every architecture of the seed reports under one protocol (000/001, 003, 004; 002 is the main study).

Each report's own tuning is replayed on short runs, choosing on VALIDATION accuracy (never the
test set), then every model is evaluated like the 002 models: the preset's epochs, its 20
evaluation rounds (the same seeds, hence the same data, as the main evaluation, so differences are
paired), the test accuracy recorded.

    000  stage 1 on ConvNetBase: c, f, dropout, batch norm, learning rate (Adam);
         stage 2 on ConvNetBaseAux: h, auxiliary weight, learning rate; the choices apply to the
         two 'Base' (shared) and the two 'Sep' (separate) networks, as the report did.
    003  per model: every width combination with 65k-75k parameters (Adam, lr 0.005, batch 100),
         then a learning-rate sweep (batch 100) and a batch-size sweep (lr 0.005) on the best widths.
    004  per model: the report's defaults (SGD, lr 0.1) against lr 0.05 and 0.01.

Writes `results/<preset>/seed_models.json`; the training runs are cached like the main study's.
"""
import itertools
import time
from dataclasses import asdict


from lib import models as M
from lib.experiments import (CACHE_VERSION, _mean_std, _selection_score, describe_run,
                             default_workers, final, get_preset, load_evaluation, preset_dir, load_results, paired_family, provenance,
                             run_many, run_path, write_if_changed)

SEED_REPORT_MODELS = {
    "000": ("ConvNetBase", "ConvNetBaseAux", "ConvNetSep", "ConvNetSepAux"),
    "003": ("BasicNet1", "AuxNet1", "AuxNet2", "AuxNet3"),
    "004": ("SimpleCNN", "WSharingModel", "AuxModel"),
}
TUNING = {  # preset name -> (epochs of a tuning run, rounds per candidate, candidates per stage or None = all)
    "quick": (1, 2, 1),
    "course": (10, 3, None),
    "seed002": (10, 3, None),
}
REFERENCE = "NetWSAL"  # every seed architecture is compared with it, round by round


def seed_models_path(preset, results_dir=None):
    return preset_dir(preset, results_dir) / "seed_models.json"


def _candidate(model, optimizer, lr, batch_size=None, aux_weight=None, **options):
    return {"model": model, "optimizer": optimizer, "lr": lr, "batch_size": batch_size, "aux_weight": aux_weight,
            "model_options": options}


class _Tuner:
    """Runs stages of candidates on short runs and keeps every cell for the results file."""

    def __init__(self, preset, results_dir, workers, progress):
        self.preset = preset
        self.folder = preset_dir(preset, results_dir)
        self.epochs, self.rounds, self.limit = TUNING.get(preset.name, TUNING["course"])
        self.workers, self.progress = workers, progress
        self.stages = []

    def config(self, candidate, epochs, eval_every):
        p = self.preset
        return p.config(candidate["model"], candidate["optimizer"], candidate["lr"], eval_every=eval_every,
                        model_options=dict(candidate["model_options"]),
                        **{k: candidate[k] if candidate[k] is not None else getattr(p, k)
                           for k in ("batch_size", "aux_weight")}, **({"epochs": epochs}))

    def stage(self, name, candidates):
        """Train each candidate on `rounds` tuning rounds; return the best (by mean validation accuracy)."""
        candidates = candidates[: self.limit] if self.limit else candidates
        seeds = [self.preset.grid_seed + r for r in range(self.rounds)]
        configs = [self.config(c, self.epochs, self.epochs) for c in candidates]
        records = run_many([(c, seeds) for c in configs], self.folder, workers=self.workers,
                           progress=self.progress, desc=f"tuning {name}")
        cells = []
        for candidate, config, record in zip(candidates, configs, records):
            val_mean, val_std = _mean_std(final(record, "val_acc"))
            cells.append({**candidate, "batch_size": config.batch_size, "aux_weight": config.aux_weight,
                          "score": _selection_score(record), "val_acc_mean": val_mean, "val_acc_std": val_std,
                          "nb_parameters": record["nb_parameters"], "run": run_path(config, seeds, "").name})
        self.stages.append({"stage": name, "epochs": self.epochs, "seeds": seeds, "cells": cells})
        best = max(cells, key=lambda c: c["score"])
        return {k: best[k] for k in ("model", "optimizer", "lr", "batch_size", "aux_weight", "model_options")}


def _choose_000(tuner):
    base = [_candidate("ConvNetBase", "Adam", lr, c=c, f=f, dropout=d, batch_norm=bn)
            for c, f, d, bn, lr in itertools.product((32, 64), (32, 64), (0.0, 0.25, 0.5), (False, True), (1e-3, 5e-3))]
    best1 = tuner.stage("000 common (ConvNetBase)", base)
    shared = best1["model_options"]
    aux = [_candidate("ConvNetBaseAux", "Adam", lr, aux_weight=w, **shared, h=h)
           for h, w, lr in itertools.product((32, 64, 128), (0.5, 1.0, 2.0), (1e-3, 5e-3))]
    best2 = tuner.stage("000 auxiliary (ConvNetBaseAux)", aux)
    return {"ConvNetBase": best1, "ConvNetSep": dict(best1, model="ConvNetSep"),
            "ConvNetBaseAux": best2, "ConvNetSepAux": dict(best2, model="ConvNetSepAux")}


def _choose_003(tuner):
    chosen = {}
    for name in SEED_REPORT_MODELS["003"]:
        report = M.get_model_class(name).report_defaults
        aux = report.get("aux_weight")
        widths = [_candidate(name, "Adam", 0.005, 100, aux, **o) for o in M.architecture_search_space_003(name)]
        best = tuner.stage(f"003 widths ({name})", widths)
        options = best["model_options"]
        best_lr = tuner.stage(f"003 learning rate ({name})", [_candidate(name, "Adam", lr, 100, aux, **options)
                                                             for lr in (1e-4, 5e-4, 1e-3, 5e-3, 1e-2)])
        best_batch = tuner.stage(f"003 batch size ({name})", [_candidate(name, "Adam", 0.005, b, aux, **options)
                                                             for b in (25, 50, 100, 200, 500, 1000)])
        chosen[name] = dict(best, lr=best_lr["lr"], batch_size=best_batch["batch_size"])
    return chosen


def _choose_004(tuner):
    return {name: tuner.stage(f"004 learning rate ({name})", [_candidate(name, "SGD", lr) for lr in (0.1, 0.05, 0.01)])
            for name in SEED_REPORT_MODELS["004"]}


def seed_models_study(preset="course", force=False, results_dir=None, progress=True, workers=None):
    """Tune every seed architecture as its report did, evaluate it, write seed_models.json."""
    preset = get_preset(preset)
    workers = default_workers(preset.device) if workers is None else workers
    start = time.perf_counter()
    tuner = _Tuner(preset, results_dir, workers, progress)
    chosen = {**_choose_000(tuner), **_choose_003(tuner), **_choose_004(tuner)}
    names = [n for report in SEED_REPORT_MODELS.values() for n in report]
    configs = [tuner.config(chosen[n], preset.epochs, 1) for n in names]
    records = run_many([(c, preset.eval_seeds) for c in configs], tuner.folder, force=force, workers=workers,
                       progress=progress, desc=f"seed architectures ({preset.name})")
    main = load_evaluation(preset, results_dir)["protocols"]["common"]["models"]
    reference = main.get(REFERENCE)
    table = {}
    for name, config, record in zip(names, configs, records):
        cls = M.get_model_class(name)
        entry = describe_run(record)
        entry.update(run=run_path(config, preset.eval_seeds, "").name, report=cls.report,
                     published=getattr(cls, "published", None), chosen=chosen[name])
        table[name] = entry
    if reference is not None and reference["seeds"] == preset.eval_seeds:
        versus = paired_family({REFERENCE: reference, **table}, [(REFERENCE, n, f"{n} against {REFERENCE}")
                                                                for n in table])
        for c in versus:  # one family: every seed architecture against the reference, Holm-corrected
            table[c["b"]]["vs_reference"] = c
    study = {
        "kind": "seed_models", "cache_version": CACHE_VERSION, "preset": asdict(preset), "seeds": preset.eval_seeds,
        "selection": "mean final-epoch VALIDATION accuracy of short tuning runs (validation pairs from the training "
                     "pool); the test set is recorded, never used",
        "tuning": tuner.stages, "models": table, "reference": REFERENCE,
        "main_models": {n: {k: e[k] for k in ("mean_acc", "std_acc", "mean_max_acc_over_epochs", "nb_parameters",
                                               "optimizer", "lr")} for n, e in main.items()},
        "wall_time_s": time.perf_counter() - start, "workers": workers, "provenance": provenance(records[-1]["device"]),
    }
    return write_if_changed(seed_models_path(preset, results_dir), study, ("preset", "seeds", "tuning", "models"))


def load_seed_models(preset="course", results_dir=None):
    return load_results(seed_models_path(preset, results_dir), "seed-architecture", "seed-models", preset)
