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

Writes `results/<preset>/seed_models.json`; the training runs are cached like the main study's. Its
rows, figure, report section and notebook part are at the end (STUDY, listed in lib.studies).
"""
import itertools
import re
import time
from dataclasses import asdict

import numpy as np

from lib import models as M
from lib.experiments import (CACHE_VERSION, SUMMARY_FIELDS, default_workers, describe_run, final, get_preset,
                             load_evaluation, load_results, paired_family, preset_dir, provenance, read_json, run_many,
                             run_path, selection_score, write_if_changed)
from lib.stats import count, lr_text, mean_std, minutes, pct, pm, seeds_text
from lib.study import Command, Study, markdown_table

SEED_REPORT_MODELS = {
    "000": ("ConvNetBase", "ConvNetBaseAux", "ConvNetSep", "ConvNetSepAux"),
    "003": ("BasicNet1", "AuxNet1", "AuxNet2", "AuxNet3"),
    "004": ("SimpleCNN", "WSharingModel", "AuxModel"),
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
        self.epochs, self.rounds, self.limit = preset.seed_tuning  # (epochs, rounds, candidates per stage)
        self.workers, self.progress = workers, progress
        self.stages = []

    def config(self, candidate, epochs, eval_every):
        p = self.preset
        return p.config(candidate["model"], candidate["optimizer"], candidate["lr"], eval_every=eval_every,
                        model_options=dict(candidate["model_options"]),
                        **{k: candidate[k] if candidate[k] is not None else getattr(p, k)
                           for k in ("batch_size", "aux_weight")}, epochs=epochs)

    def stage(self, name, candidates):
        """Train each candidate on `rounds` tuning rounds; return the best (by mean validation accuracy)."""
        candidates = candidates[:self.limit]  # limit None: all
        seeds = [self.preset.grid_seed + r for r in range(self.rounds)]
        configs = [self.config(c, self.epochs, self.epochs) for c in candidates]
        records = run_many([(c, seeds) for c in configs], self.folder, workers=self.workers,
                           progress=self.progress, desc=f"tuning {name}")
        cells = []
        for candidate, config, record in zip(candidates, configs, records):
            val_mean, val_std = mean_std(final(record, "val_acc"))
            cells.append({**candidate, "batch_size": config.batch_size, "aux_weight": config.aux_weight,
                          "score": selection_score(record), "val_acc_mean": val_mean, "val_acc_std": val_std,
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
        aux = M.get_model_class(name).report_defaults.get("aux_weight")
        widths = [_candidate(name, "Adam", 0.005, 100, aux, **o) for o in M.architecture_search_space_003(name)]
        best = tuner.stage(f"003 widths ({name})", widths)  # then each sweep from the best widths (lr 0.005, batch 100)
        lr = tuner.stage(f"003 learning rate ({name})", [dict(best, lr=v) for v in (1e-4, 5e-4, 1e-3, 5e-3, 1e-2)])
        batch = tuner.stage(f"003 batch size ({name})",
                            [dict(best, batch_size=v) for v in (25, 50, 100, 200, 500, 1000)])
        chosen[name] = dict(best, lr=lr["lr"], batch_size=batch["batch_size"])
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
    table = {name: dict(describe_run(record), run=run_path(config, preset.eval_seeds, "").name,
                        report=M.get_model_class(name).report, published=M.get_model_class(name).published,
                        chosen=chosen[name]) for name, config, record in zip(names, configs, records)}
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


# ---------------------------------------------------------------------------------------------
# Rows, figure, report section and notebook part (STUDY, lib.studies)
# ---------------------------------------------------------------------------------------------


def entries(preset="course", results_dir=None):
    path = seed_models_path(preset, results_dir)
    return {m: (entry, path) for m, entry in (read_json(path)["models"] if path.exists() else {}).items()}


def summary_rows(preset="course", results_dir=None):
    """Every seed-report architecture (protocol "seed-report tuning"); none before seed-models ran."""
    return {model: dict({k: entry[k] for k in SUMMARY_FIELDS if k in entry}, protocol="seed-report tuning",
                        report=entry["report"], batch_size=entry["config"]["batch_size"],
                        model_options=entry["config"]["model_options"])
            for model, (entry, _) in entries(preset, results_dir).items()}


REPORT_COLORS = {"002": "tab:blue", "000": "tab:orange", "003": "tab:green", "004": "tab:purple"}


def seed_models_plot(seed_models, evaluation=None):
    """Test accuracy (%) of every architecture: the four 002 models of the main study, then each seed
    report's architectures tuned as their report did (seed_models.json), one colour per report. Every
    round is a dot, the mean +- std a diamond with a bar; the dashed line is the reference's mean
    (NetWSAL). The 002 rounds come from the evaluation when it is given (same rounds), else only
    their mean +- std from seed_models.json."""
    from matplotlib.lines import Line2D

    from lib.plots import FONT, accuracies, dots, figure, params_text, preset_name, style

    main = dict(seed_models["main_models"])
    if evaluation is not None and evaluation["seeds"] == seed_models["seeds"]:
        main = {n: e for n, e in evaluation["protocols"]["common"]["models"].items() if n in main} or main
    rows = [(n, "002", e) for n, e in main.items()]
    rows += [(n, e["report"], e) for n, e in seed_models["models"].items()]
    fig = figure(0.8 + 0.13 * len(rows))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    # one row per model, half a row more between two reports
    ys = np.arange(len(rows)) + 0.5 * np.cumsum([k > 0 and r != rows[k - 1][1] for k, (_, r, _) in enumerate(rows)])
    for y, (name, report, entry) in zip(ys, rows):
        mean = 100 * entry["mean_acc"] if entry.get("mean_acc") is not None else None
        std = 100 * (entry.get("std_acc") or 0.0) if mean is not None else None
        dots(ax, y, accuracies(entry), REPORT_COLORS.get(report, "0.4"), rng, mean=mean, std=std)
    reference = seed_models["reference"]
    if reference in main and main[reference].get("mean_acc") is not None:
        ax.axvline(100 * main[reference]["mean_acc"], color="0.35", linestyle="--", linewidth=0.9, zorder=1)
    ax.set_yticks(ys, [f"{name} ({params_text(e.get('nb_parameters'), compact=True)})" for name, _, e in rows])
    ax.set_ylim(max(ys, default=0) + 0.7, -0.7)  # first row on top
    style(ax, "x")
    ax.set_xlabel("Test accuracy at the last epoch (%)", fontsize=FONT)
    reports = list(dict.fromkeys(r for _, r, _ in rows))
    handles = [Line2D([], [], linestyle="none", marker="D", markersize=5, color=REPORT_COLORS.get(r, "0.4"),
                      markeredgecolor="black", markeredgewidth=0.5,
                      label=f"report {r}" + (" (main study)" if r == "002" else "")) for r in reports]
    if reference in main:
        handles.append(Line2D([], [], color="0.35", linestyle="--", linewidth=0.9, label=f"{reference} mean"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=FONT - 1, frameon=False)
    fig.suptitle(f"Every architecture, {len(seed_models['seeds'])} rounds each ({preset_name(seed_models)} "
                 "preset): dot = one round, diamond = mean ± std", fontsize=FONT)
    return fig


def figures(preset="course", results_dir=None):
    if not seed_models_path(preset, results_dir).exists():
        return []
    study, evaluation = load_seed_models(preset, results_dir), load_evaluation(preset, results_dir)
    return [("seed_models", lambda: seed_models_plot(study, evaluation))]


def versus_text(c):
    """A paired comparison with a reference (lib.stats.paired, after adjust_family), formatted."""
    if c is None or c.get("mean_diff") is None:
        return {"diff": "n/a", "ci": "n/a", "median": "n/a", "wtl": "n/a", "t_p": "n/a", "w_p": "n/a",
                "verdict": "not measured"}
    from lib.report import comparison

    return comparison(c)


def options_text(options, aux_weight=None):
    """The notable options of a chosen setting, abbreviated for the table: 'conv 32/128/64, hidden 16'
    or 'c 64, f 32, h 64, drop 0.25, BN, λ 0.5' (drop: dropout, BN: batch norm, λ: auxiliary weight)."""
    options = dict(options or {})
    parts = []
    for label, keys in (("conv", ("dim_conv1", "dim_conv2", "dim_conv3")), ("hidden", ("dim_hidden", "dim_hidden2")),
                        ("c", ("c",)), ("f", ("f",)), ("h", ("h",))):
        values = [str(options.pop(k)) for k in keys if k in options]
        if values:
            parts.append(f"{label} " + "/".join(values))
    if "dropout" in options:
        parts.append(f"drop {options.pop('dropout'):g}")
    if options.pop("batch_norm", False):
        parts.append("BN")
    parts += [f"{k} {v}" for k, v in options.items()]
    if aux_weight is not None:
        parts.append(f"λ {aux_weight:g}")
    return ", ".join(parts) or "—"


def _count_text(models):
    """[(model, candidates)] of one kind of stage: '24 candidates on BasicNet1', '3 candidates per
    model' (the same count for each) or 'BasicNet1 24, AuxNet1 31 candidates'."""
    model, n = models[0]
    if len(models) == 1:
        return f"{n} candidate{'s' * (n != 1)} on {model}"
    if len({k for _, k in models}) == 1:
        return f"{n} candidate{'s' * (n != 1)} per model"
    return ", ".join(f"{m} {k}" for m, k in models) + " candidates"


def stages_by_report(stages):
    """The tuning stages ('003 widths (BasicNet1)'), grouped by report then by kind, with their candidate counts:
    [{"report": "003", "stages": [{"kind": "widths", "count": "BasicNet1 24, AuxNet1 31 candidates"}]}]."""
    grouped = {}
    for stage in stages:
        report, kind, model = re.fullmatch(r"(\d{3}) (.+?) \((.+)\)", stage["stage"]).groups()
        grouped.setdefault(report, {}).setdefault(kind, []).append((model, len(stage["cells"])))
    return [{"report": report, "stages": [{"kind": kind, "count": _count_text(models)}
                                          for kind, models in kinds.items()]} for report, kinds in grouped.items()]


def section(src):
    """numbers['seed_models']: every seed architecture beside the four 002 models (seed_models.json: each
    report's tuning replayed on validation, then the evaluation's rounds), with the numbers the
    reports published (quoted) and the paired difference with the reference, NetWSAL."""
    from lib.report import PUBLISHED

    study = src.later("seed_models", "seed-models", ("models", "tuning", "main_models", "reference"))
    if study is None:
        return None
    main = src.evaluation["protocols"]["common"]["models"]
    for name, entry in study["main_models"].items():
        if name not in main or main[name]["mean_acc"] != entry["mean_acc"]:
            raise src.stale("seed_models", "seed-models", f"was not made from {src.folder / 'evaluation.json'} "
                                                            f"({name} differs)")
    reference = study["reference"]
    # one family: every architecture against the reference, paired by round, Holm-corrected
    versus = {c["b"]: c for c in paired_family({**study["models"], **main},
                                               [(reference, n, n) for n in (*main, *study["models"]) if n != reference])}
    quoted_numbers = {m["model"]: m for block in read_json(PUBLISHED)["reports"].values() for m in block["models"]}

    default_aux = src.evaluation["preset"]["aux_weight"]

    def row(name, report, e, published_kind):
        config = e["config"]
        own_aux = "mean_digit_acc" in e and config.get("aux_weight") != default_aux  # an auxiliary model's own λ
        quoted = quoted_numbers.get(name)
        return {"model": name, "report": report, "params": count(e["nb_parameters"]),
                "optimizer": config["optimizer"], "lr": lr_text(config["lr"]), "batch_size": config["batch_size"],
                "options": options_text(config.get("model_options"), config.get("aux_weight") if own_aux else None),
                "acc": pm(e["mean_acc"], e["std_acc"]), "mean_acc": e["mean_acc"],
                "max_acc": pm(e["mean_max_acc_over_epochs"], e["std_max_acc_over_epochs"]),
                "mean_max_acc": e["mean_max_acc_over_epochs"],
                "published": pm(quoted["mean"], quoted["pm"], scale=1) if quoted else None,
                "published_kind": published_kind if quoted else None,
                "is_reference": name == reference, "vs": None if name == reference else versus_text(versus.get(name)),
                "n_rounds": e["n_rounds"], "diverged": e["diverged_rounds"]}

    rows = [row(name, "002", main[name], "error") for name in study["main_models"]]
    rows += [row(name, e["report"], e, "max_val") for name, e in study["models"].items()]
    seed_rows = rows[len(study["main_models"]):]
    verdicts = [r["vs"]["verdict"] for r in seed_rows]
    optimistic = [{"model": r["model"], "ours": pct(r["mean_max_acc"]), "published": r["published"],
                   "higher": r["mean_max_acc"] is not None and 100 * r["mean_max_acc"] > e["published"]["mean"]}
                  for r, e in zip(seed_rows, study["models"].values()) if r["published_kind"] == "max_val"]
    best = max(seed_rows, key=lambda r: -1 if r["mean_acc"] is None else r["mean_acc"])  # all rounds diverged: last
    tuning_runs = sum(len(s["cells"]) for s in study["tuning"])
    stage0 = study["tuning"][0] if study["tuning"] else {"epochs": 0, "seeds": []}
    return {
        "rows": rows, "reference": reference, "nb_models": len(seed_rows),
        "nb_reports": len({r["report"] for r in seed_rows}),
        "nb_better": verdicts.count("helps"), "nb_worse": verdicts.count("hurts"),
        "nb_unclear": len(verdicts) - verdicts.count("helps") - verdicts.count("hurts"),
        "best": {"model": best["model"], "report": best["report"], "acc": best["acc"], "vs": best["vs"]},
        "reference_acc": next((r["acc"] for r in rows if r["is_reference"]), "n/a"),
        "optimistic": optimistic, "nb_optimistic_higher": sum(o["higher"] for o in optimistic),
        "tuning": stages_by_report(study["tuning"]), "tuning_runs": count(tuning_runs),
        "tuning_epochs": stage0["epochs"], "tuning_rounds": len(stage0["seeds"]), "aux_weight": f"{default_aux:g}",
        "tuning_seeds": seeds_text(stage0["seeds"]) if stage0["seeds"] else "n/a",
        "nb_rounds": len(study["seeds"]), "wall_min": minutes(study["wall_time_s"]),
        "diverged": sum(r["diverged"] for r in seed_rows),
    }


def notebook(preset="course", results_dir=None):
    """The notebook's part, the report's numbers: every architecture beside the published ones (quoted)."""
    from lib.report import sources

    n = section(sources(preset, results_dir))
    if n is None:
        return [f"No seed-architecture results for this preset yet: `python -m lib seed-models --preset "
                f"{get_preset(preset).name}`."]
    published = {"error": " (error)", "max_val": " (max. val.)", None: "—"}
    return [markdown_table(
        ["model", "report", "parameters", "setting (chosen on validation)", "options", "test accuracy (%)",
         "max over epochs (%), optimistic", "published (%)", f"vs {n['reference']} (points, 95 % CI)"],
        [[r["model"], r["report"], r["params"], f"{r['optimizer']}, lr {r['lr']}, batch {r['batch_size']}", r["options"],
          r["acc"], r["max_acc"], (r["published"] or "") + published[r["published_kind"]],
          f"{r['vs']['diff']} {r['vs']['ci']}" if r["vs"] else "—"] for r in n["rows"]]),
        f"Tuning: {n['tuning_runs']} short runs ({n['tuning_epochs']} epochs, {n['tuning_rounds']} rounds each)."]


def _command(args):
    study = seed_models_study(args.preset, force=args.force, results_dir=args.results_dir)
    print(f"seed architectures ({args.preset}): {len(study['models'])} models, {study['wall_time_s']:.0f} s")


STUDY = Study(name="seed_models", title="Every architecture of the seed reports",
              files=(("seed_models", "seed-models"),),
              commands=(Command("seed-models", "tune and evaluate every seed-report architecture", _command,
                                in_all=True),),
              rows=summary_rows, entries=entries, figures=figures, sections=(("seed_models", section, ("seed_models",)),),
              notebook=notebook)
