"""report.pdf, built from the results files: the report can never disagree with them.

    python -m lib.report --preset course     # report.pdf at the top level (`make report` draws the figures first)
    python -m lib.report --preset quick --results-dir /tmp/r --figures-dir /tmp/f --output /tmp/report.pdf

Two steps:

1. Python (this module) collects every number the text shows from `results/<preset>/` (grid.json,
   evaluation.json, and the later sections' files when they exist) and the numbers the seed
   reports published (`report/published.json`, quoted, never ours) into ONE file,
   `<build>/numbers.json`, formatted here once (two decimals for percentages, `p < 0.001` ...). It
   copies the figures of the preset from `figures/` (drawn by `python -m lib figures`) and draws
   the architecture diagram from the model registry (`lib.plots.architecture_diagram`).
2. typst compiles `report/report.typ`, which reads numbers.json with `json(...)`: the .typ source
   holds no result typed by hand, and its sentences about effects ("weight sharing lowers the
   error ...") are chosen by typst from the sign of the measured 95% confidence intervals.

The build folder (`report/build/` by default, git-ignored) is a complete typst project: the .typ
sources copied from `report/`, numbers.json and figures/; `typst compile report/build/report.typ`
rebuilds the PDF by hand. Edit the sources in `report/`, never the copies.

Why typst: the compiler is a single wheel on PyPI (`pip install typst`: 34 MB, 84 MB installed,
no dependencies, its fonts built in), so `make report` works offline from requirements.txt alone,
and typst reads JSON natively (`json("numbers.json")`), so the document computes its sentences from
the numbers instead of receiving pre-rendered text. A LaTeX build would need a TeX distribution
from the system's package manager (texlive-latex-recommended and its dependencies: about 375 MB
installed on Debian), outside the virtual environment the rest of the project lives in.

Sections. Each part of the report is one function `section_<name>(sources)` below, returning the
dict that becomes `numbers[<name>]`, or None to leave the part out (its results file does not
exist); SECTIONS lists them in order. The two later studies are such parts: `seed_models`
(results/<preset>/seed_models.json, shown by report/seed_models.typ) and `best` (best.json, with
best_recipe.json and confirmation.json when they exist: report/best.typ), each with its figure
(SECTION_FIGURES), included by report.typ with `#if "<name>" in N { include ... }`: the document shows a part only when its numbers are there.
A later study's file must have been evaluated on the evaluation's rounds; otherwise the build
stops and names the command that recomputes it.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from lib.experiments import (PROJECT_ROOT, RESULTS_DIR, ResultsError, get_preset, load_evaluation,
                             load_grid, preset_dir, read_json, write_json_atomic)

REPORT_DIR = PROJECT_ROOT / "report"  # sources: report.typ, published.json
BUILD_DIR = REPORT_DIR / "build"  # numbers.json, figures, copied sources (git-ignored)
OUTPUT = PROJECT_ROOT / "report.pdf"
PUBLISHED = REPORT_DIR / "published.json"
CI_LEVEL = 95  # lib.stats.paired gives the 95% t-interval of the mean paired difference
from lib.stats import ALPHA  # family-wise level of each family of comparisons (Holm)
# figures/<preset>_<name>.pdf the report shows, drawn by `python -m lib figures` (lib.plots.draw_all)
RESULT_FIGURES = ("grid", "boxplot", "overfitting", "curves")
SECTION_FIGURES = {"seed_models": "seed_models", "best": "best",  # section -> its figure(s), when the section is shown
                   "size": ("size_accuracy", "size_effects"), "aux_weight": "aux_weight",
                   "errors": ("error_matrices", "error_gallery")}
DIAGRAM_MODELS = ("NetBase", "NetWSAL")  # the architecture figure: one panel each


# ---------------------------------------------------------------------------------------------
# Formatting: every number of the text is formatted here, once
# ---------------------------------------------------------------------------------------------


def pct(x, digits=2):
    """A fraction as a percentage: 0.88714 -> '88.71'."""
    return None if x is None else f"{100 * x:.{digits}f}"


def pm(mean, std, digits=2, scale=100):
    """'88.71 ± 0.48' (fractions, shown as percentages by default)."""
    if mean is None:
        return "n/a"
    return f"{scale * mean:.{digits}f} ± {scale * (std or 0.0):.{digits}f}"


def points(x, digits=2):
    """A signed difference of fractions in percentage points: 0.0123 -> '+1.23', -0.004 -> '−0.40'."""
    if x is None:
        return "n/a"
    text = f"{100 * x:+.{digits}f}"
    return text.replace("-", "−")


def pvalue(p):
    if p is None:
        return "n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def count(n):
    return f"{n:,}"


def lr_text(lr):
    return f"{lr:g}"


def seeds_text(seeds):
    seeds = list(seeds)
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ", ".join(str(s) for s in seeds)


def minutes(seconds):
    return f"{seconds / 60:.1f}"


# ---------------------------------------------------------------------------------------------
# Sources: the results files of one preset, read once
# ---------------------------------------------------------------------------------------------


@dataclass
class Sources:
    """Where one build reads from and writes to; the results files are read once, on first use."""

    preset: str
    results_dir: Path = RESULTS_DIR
    figures_dir: Path = PROJECT_ROOT / "figures"
    build_dir: Path = BUILD_DIR
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def folder(self):
        """results/<preset>/"""
        return preset_dir(self.preset, self.results_dir)

    def _results_option(self):
        default = Path(self.results_dir).resolve() == RESULTS_DIR.resolve()
        return "" if default else f" --results-dir {self.results_dir}"

    @property
    def grid(self):
        if "grid" not in self._cache:
            self._cache["grid"] = load_grid(self.preset, self.results_dir)
        return self._cache["grid"]

    @property
    def evaluation(self):
        if "evaluation" not in self._cache:
            evaluation = load_evaluation(self.preset, self.results_dir)
            if evaluation["grid_choice"] != self.grid["choice"] or evaluation["preset"] != self.grid["preset"]:
                raise ResultsError(f"{self.folder / 'evaluation.json'} was not made from the grid search in "
                                   f"{self.folder / 'grid.json'}: rerun `python -m lib evaluate --preset "
                                   f"{self.preset}{self._results_option()}`")
            self._cache["evaluation"] = evaluation
        return self._cache["evaluation"]

    def optional(self, name):
        """The dict of results/<preset>/<name>.json, or None when the file does not exist."""
        path = self.folder / f"{name}.json"
        return read_json(path) if path.exists() else None

    def figure(self, name):
        """Path of figures/<preset>_<name>.pdf; ResultsError naming the command when it is missing."""
        path = Path(self.figures_dir) / f"{get_preset(self.preset).name}_{name}.pdf"
        if not path.exists():
            figures = "" if Path(self.figures_dir).resolve() == (PROJECT_ROOT / "figures").resolve() else \
                f" (then copy them to {self.figures_dir})"
            raise ResultsError(f"figure {path} is missing: run `python -m lib figures --preset {self.preset}"
                               f"{self._results_option()}`{figures}")
        return path


# ---------------------------------------------------------------------------------------------
# Sections: one function each, returning numbers[<name>] (None: the part is left out)
# ---------------------------------------------------------------------------------------------


def section_meta(src):
    """Where the numbers come from: preset, the commit and date of every results file, software,
    machine, and the time of each step of the study (the build's date is the latest results file's)."""
    grid, evaluation = src.grid, src.evaluation
    prov = evaluation["provenance"]
    files = [("grid", grid), ("evaluation", evaluation)]
    files += [(name, src.optional(name)) for name in ("failures", "seed_models", "best", "best_recipe", "confirmation",
                                                      "size", "aux_weight", "errors")]
    provenance = []
    for name, study in files:
        if study is None or "provenance" not in study:  # an incomplete file: its own section says so
            continue
        commit = study["provenance"].get("git_commit") or "unknown"
        provenance.append({"file": f"{name}.json", "commit": commit.split("+")[0][:12],
                           "clean": "+" not in commit, "written_at": study["provenance"].get("written_at")})
    steps = [("grid", "grid", grid["training_time_s"]), ("evaluate", "evaluation", evaluation["training_time_s"])]
    for name, command in (("failures", "failures"), ("seed_models", "seed-models"), ("best", "best"),
                          ("confirmation", "confirm"), ("size", "size-study"),
                          ("aux_weight", "aux-study"), ("errors", "error-study")):
        study = src.optional(name)
        if study is not None and ("training_time_s" in study or "wall_time_s" in study):
            steps.append((command, name, study.get("training_time_s", study.get("wall_time_s"))))
    return {
        "preset": evaluation["preset"]["name"],
        "results_folder": f"results/{evaluation['preset']['name']}",
        "provenance": provenance, "all_clean": all(p["clean"] for p in provenance),
        "torch": prov.get("torch"), "python": prov.get("python"), "device": prov.get("device"),
        "cpu_threads": prov.get("cpu_threads"),
        "written_at": max(p["written_at"] for p in provenance if p["written_at"]),
        "grid_training_min": minutes(grid["training_time_s"]),
        "eval_training_min": minutes(evaluation["training_time_s"]),
        "steps": [{"command": f"python -m lib {c} --preset {evaluation['preset']['name']}", "file": f"{n}.json",
                   "minutes": minutes(t)} for c, n, t in steps],
        "total_min": minutes(sum(t for _, _, t in steps)),
        "command": f"python -m lib.report --preset {evaluation['preset']['name']}",
    }


def section_data(src):
    """The MNIST pools (sizes, md5s, whether they are the official files) and the pairs per round."""
    from lib.data import MD5

    preset = src.evaluation["preset"]
    pools = []
    for split, pool in src.evaluation["provenance"]["data_pools"].items():
        files = [{"name": name, "md5": md5, "official": MD5.get(name) == md5} for name, md5 in pool["md5"].items()]
        pools.append({"split": split, "nb_images": count(pool["nb_images"]), "files": files,
                      "official": all(f["official"] for f in files)})
    return {"pools": pools, "nb_train": count(preset["nb_train"]), "nb_val": count(preset["nb_val"]),
            "nb_test": count(preset["nb_test"]), "all_official": all(p["official"] for p in pools)}


def section_models(src):
    """The evaluated architectures: parameters, shared/separate branches, auxiliary losses, layers
    (read from the models themselves, as the diagram)."""
    from lib.plots import architecture_of

    out = []
    for name, entry in src.evaluation["protocols"]["common"]["models"].items():
        try:
            arch = architecture_of(name)
        except ValueError:  # not a two-branch model: no layer description, the rest still holds
            arch = None
        row = {"model": name, "params": count(entry["nb_parameters"])}
        if arch is not None:
            words = {"concat": "concatenation"}
            row.update(shared=arch["shared"], auxiliary=arch["auxiliary"],
                       branch="; ".join(", ".join(b["layers"]) for b in arch["branch"]),
                       branch_out=arch["branch"][-1]["shape"],
                       head="; ".join(", ".join(b["layers"]) for b in arch["head"]),
                       merge=", then ".join(words.get(m, m) for m in arch["merge"]),
                       aux_at_branch_output=arch["aux_at_branch_output"])
        out.append(row)
    return {"models": out}


def section_training(src):
    """The fixed training settings and the protocol of the study (preset of the results files)."""
    grid, evaluation = src.grid, src.evaluation
    p = evaluation["preset"]
    return {
        "epochs": p["epochs"], "batch_size": p["batch_size"], "aux_weight": f"{p['aux_weight']:g}",
        "steps_per_epoch": count(-(-p["nb_train"] // p["batch_size"])),
        "grid_rounds": p["grid_rounds"], "eval_rounds": p["eval_rounds"],
        "grid_seeds": seeds_text(grid["seeds"]), "eval_seeds": seeds_text(evaluation["seeds"]),
        "grid_eval_every": p["grid_eval_every"],
        "optimizers": ", ".join(p["optimizers"]), "nb_optimizers": len(p["optimizers"]),
        "lrs": ", ".join(lr_text(lr) for lr in p["lrs"]), "nb_lrs": len(p["lrs"]),
    }


def section_grid(src):
    """The grid search: its size and the chosen settings (common and per model)."""
    from lib.experiments import CHANCE

    grid = src.grid
    choice = grid["choice"]
    common = choice["common"]
    return {
        "nb_cells": len(grid["cells"]), "nb_models": len(choice["per_model"]),
        "chance": f"{CHANCE:g}",
        "diverged_cells": sum(1 for c in grid["cells"] if c["diverged_rounds"]),
        "diverged_rounds": sum(c["diverged_rounds"] for c in grid["cells"]),
        "common": {"optimizer": common["optimizer"], "lr": lr_text(common["lr"]),
                   "val_acc": pct(common["mean_val_acc"])},
        "per_model": [{"model": m, "optimizer": c["optimizer"], "lr": lr_text(c["lr"]), "val_acc": pct(c["val_acc_mean"]),
                       "is_common": (c["optimizer"], c["lr"]) == (common["optimizer"], common["lr"])}
                      for m, c in choice["per_model"].items()],
    }


def _comparison(c):
    """One paired comparison (lib.stats.paired, after adjust_family), formatted for the text."""
    ci = c.get("ci95")
    out = {"a": c.get("a"), "b": c.get("b"), "question": c.get("question"), "n_pairs": c["n_pairs"],
           "diff": points(c["mean_diff"]) if c["mean_diff"] is not None else "n/a",
           "median": points(c["median_diff"]) if c["median_diff"] is not None else "n/a",
           "ci": f"[{points(ci[0])}, {points(ci[1])}]" if ci else "n/a",
           "wtl": f"{c['wins']}/{c['ties']}/{c['losses']}",
           "t_p": pvalue(c.get("t_p_holm")), "w_p": pvalue(c.get("wilcoxon_p_holm")),
           "verdict": c["verdict"]}
    if "without_failed" in c:
        wf = c["without_failed"]
        out["without_failed"] = {"n_pairs": wf["n_pairs"], "diff": points(wf["mean_diff"]),
                                 "median": points(wf["median_diff"]), "t_p": pvalue(wf.get("t_p_holm")),
                                 "w_p": pvalue(wf.get("wilcoxon_p_holm")), "verdict": wf["verdict"]}
    return out


def _failed_text(failed):
    return ", ".join(f"{f['seed']} ({f['reason']})" for f in failed) or "none"


def section_results(src):
    """Per protocol: test accuracy per model (mean ± std, median and interquartile range, failed
    rounds with their seeds), and the paired comparisons with their verdicts, as the evaluation
    file stores them (lib.experiments.paired_family: lib.stats.paired, Holm, lib.stats.verdict)."""
    import numpy as np

    from lib.experiments import failed_rounds

    evaluation = src.evaluation
    out = {}
    for protocol, block in evaluation["protocols"].items():
        rows = []
        for name, e in block["models"].items():
            acc = np.array([a for a in e["test_acc"] if a is not None], dtype=float)
            failed = e.get("failed_rounds", failed_rounds(e))
            rows.append({
                "model": name, "optimizer": e["optimizer"], "lr": lr_text(e["lr"]),
                "acc": pm(e["mean_acc"], e["std_acc"]), "err": pm(e["mean_err"], e["std_err"]),
                "mean_acc": e["mean_acc"], "mean_err": e["mean_err"], "std_err": e["std_err"],
                "err_mean": pct(e["mean_err"]), "err_std": pct(e["std_err"]), "std_acc": pct(e["std_acc"]),
                "median": pct(float(np.median(acc))) if acc.size else "n/a",
                "iqr": f"{pct(float(np.percentile(acc, 25)))}–{pct(float(np.percentile(acc, 75)))}" if acc.size else "n/a",
                "max_acc": pm(e["mean_max_acc_over_epochs"], e["std_max_acc_over_epochs"]),
                "val_acc": pm(e["mean_val_acc"], e["std_val_acc"]),
                "worst": pct(float(acc.min())) if acc.size else "n/a",
                "n_rounds": e["n_rounds"], "diverged": e["diverged_rounds"], "params": count(e["nb_parameters"]),
                "nb_failed": len(failed), "failed": _failed_text(failed),
            })
        comparisons = [_comparison(c) for c in block["comparisons"]]
        best = min(rows, key=lambda r: r["mean_err"])
        out[protocol] = {"rows": rows, "comparisons": comparisons, "best": best["model"],
                         "by_error": [r["model"] for r in sorted(rows, key=lambda r: r["mean_err"])],
                         "nb_comparisons": len(comparisons),
                         "verdicts_differ": [f"{c['b']} − {c['a']}" for c in comparisons
                                             if c.get("without_failed", {}).get("verdict", c["verdict"]) != c["verdict"]]}
    return {"protocols": out, "ci_level": CI_LEVEL, "alpha": f"{ALPHA:g}",
            "nb_rounds": evaluation["preset"]["eval_rounds"]}


def section_overfitting(src):
    """Training against validation accuracy at the last epoch (median over the healthy rounds), and
    the first epoch at which the median training accuracy reaches 99 %, per model (common protocol)."""
    import numpy as np

    from lib.plots import failed_mask, _array

    rows = []
    for name, e in src.evaluation["protocols"]["common"]["models"].items():
        healthy = ~failed_mask(e)
        train, val = _array(e["curves"]["train_acc"])[healthy], _array(e["curves"]["val_acc"])[healthy]
        median_train = np.nanmedian(train, axis=0)
        reached = np.flatnonzero(median_train >= 0.99)
        t, v = float(np.nanmedian(train[:, -1])), float(np.nanmedian(val[:, -1]))
        rows.append({"model": name, "train": pct(t, 1), "val": pct(v, 1), "gap": f"{100 * (t - v):.1f}",
                     "epoch_99": int(reached[0] + 1) if reached.size else None})
    return {"rows": rows}


def section_failures(src):
    """The failed-round rule and its measured explanation: results/<preset>/failures.json."""
    from lib import stats

    study = src.optional("failures")
    rule = {"majority": pct(stats.MAJORITY_RATE, 0), "never": pct(stats.MAJORITY_RATE + stats.NEVER_LEARNED_MARGIN, 0),
            "stuck": pct(stats.STUCK_MARGIN, 0), "min_rounds": stats.MIN_ROUNDS_FOR_STUCK}
    if study is None:
        return {"rule": rule, "cases": []}
    if study["seeds"] != src.evaluation["seeds"]:
        raise _stale(src, "failures", "failures", "was not made from the evaluation's rounds")
    cases = []
    for c in study["cases"]:
        cases.append({
            "model": c["model"], "seed": c["seed"], "reason": c["reason"], "val_acc": pct(c["val_acc"], 1),
            "test_acc": pct(c["test_acc"], 1), "setting": f"{c['optimizer']} {lr_text(c['lr'])}",
            "others": [{"model": o["model"], "val_acc": pct(o["val_acc"], 1)} for o in c["same_round_other_models"]],
            "others_learn": all(not o["failed"] for o in c["same_round_other_models"]),
            "reruns": [{"setting": f"{r['optimizer']} {lr_text(r['lr'])}", "why": r["why"],
                        "val_acc": pct(r["val_acc"], 1), "test_acc": pct(r["test_acc"], 1),
                        "train_acc": pct(r["train_acc"], 1), "failed": r["failed"],
                        "reason": r["reason"] or "learned"} for r in c["reruns"]],
            "fails_again": c["fails_again"], "cause": c["cause"],
        })
    return {"rule": rule, "cases": cases, "causes": sorted({c["cause"] for c in cases}),
            "training_min": minutes(study["training_time_s"])}


def section_published(src):
    """The seed reports' published numbers (report/published.json, quoted) beside ours, matched by
    role: shared or separate branches, with or without auxiliary losses."""
    published = read_json(PUBLISHED)["reports"]
    evaluation = src.evaluation
    models = evaluation["protocols"]["common"]["models"]
    roles = {}
    for row in section_models(src)["models"]:
        if "shared" in row:
            roles.setdefault((row["shared"], row["auxiliary"]), row["model"])  # the first evaluated model of a role
    table = []
    for shared, auxiliary in ((False, False), (True, False), (False, True), (True, True)):
        ours = roles.get((shared, auxiliary))
        entry = {"shared": shared, "auxiliary": auxiliary, "ours": ours}
        if ours is not None:
            e = models[ours]
            entry.update(err=pm(e["mean_err"], e["std_err"]),
                         max_acc=pm(e["mean_max_acc_over_epochs"], e["std_max_acc_over_epochs"]))
        for report, block in published.items():
            match = [m for m in block["models"] if (m["shared"], m["auxiliary"]) == (shared, auxiliary)]
            if match:
                entry[f"r{report}"] = {"model": match[0]["model"],
                                      "value": pm(match[0]["mean"], match[0]["pm"], scale=1)}
        table.append(entry)
    reports = {f"r{k}": {key: (lr_text(v) if key == "lr" else v) for key, v in block.items() if key != "models"}
               for k, block in published.items()}
    return {"table": table, "reports": reports}


def _stale(src, name, command, why):
    return ResultsError(f"{src.folder / (name + '.json')} {why}: rerun `python -m lib {command} --preset "
                        f"{src.preset}{src._results_option()}`")


def _later_study(src, name, command, keys):
    """The dict of results/<preset>/<name>.json, checked: it holds `keys` and was trained on the rounds
    of the main evaluation (so its paired comparisons hold); None when the file does not exist."""
    study = src.optional(name)
    if study is None:
        return None
    missing = [k for k in keys if k not in study]
    if study.get("kind") != name or missing:
        raise _stale(src, name, command, f"is not a complete {name} results file (missing: "
                                         f"{', '.join(missing) or 'kind'})")
    if study["seeds"] != src.evaluation["seeds"]:
        raise _stale(src, name, command, f"was evaluated on seeds {seeds_text(study['seeds'])}, not on the "
                                         f"evaluation's {seeds_text(src.evaluation['seeds'])}")
    return study


def _versus(c):
    """A paired comparison with a reference (lib.stats.paired, after adjust_family), formatted."""
    if c is None or c.get("mean_diff") is None:
        return {"diff": "n/a", "ci": "n/a", "median": "n/a", "wtl": "n/a", "t_p": "n/a", "w_p": "n/a",
                "verdict": "not measured"}
    return _comparison(c)


def options_text(options, aux_weight=None):
    """The notable options of a chosen setting, abbreviated for the table: 'conv 32/128/64, hidden 16'
    or 'c 64, f 32, h 64, drop 0.25, BN, λ 0.5' (drop: dropout, BN: batch norm, λ: auxiliary weight)."""
    options = dict(options or {})
    parts = []
    convs = [str(options.pop(k)) for k in ("dim_conv1", "dim_conv2", "dim_conv3") if k in options]
    if convs:
        parts.append("conv " + "/".join(convs))
    hidden = [str(options.pop(k)) for k in ("dim_hidden", "dim_hidden2") if k in options]
    if hidden:
        parts.append("hidden " + "/".join(hidden))
    for key in ("c", "f", "h"):
        if key in options:
            parts.append(f"{key} {options.pop(key)}")
    if "dropout" in options:
        parts.append(f"drop {options.pop('dropout'):g}")
    if options.pop("batch_norm", False):
        parts.append("BN")
    parts += [f"{k} {v}" for k, v in options.items()]
    if aux_weight is not None:
        parts.append(f"λ {aux_weight:g}")
    return ", ".join(parts) or "—"


def _stages_by_report(stages):
    """The tuning stages, grouped by report then by kind, with their candidate counts:
    [{"report": "003", "stages": [{"kind": "widths", "count": "BasicNet1 24, AuxNet1 31 candidates"}]}]."""
    import re

    grouped = {}
    for stage in stages:
        match = re.fullmatch(r"(\d{3}) (.+?) \((.+)\)", stage["stage"])
        report, kind, model = match.groups() if match else ("?", stage["stage"], "")
        grouped.setdefault(report, {}).setdefault(kind, []).append((model, len(stage["cells"])))
    out = []
    for report, kinds in grouped.items():
        rows = []
        for kind, models in kinds.items():
            counts = {n for _, n in models}
            if len(models) == 1:
                text = f"{models[0][1]} candidate{'s' * (models[0][1] != 1)} on {models[0][0]}"
            elif len(counts) == 1:
                text = f"{counts.pop()} candidate{'s' * (models[0][1] != 1)} per model"
            else:
                text = ", ".join(f"{m} {n}" for m, n in models) + " candidates"
            rows.append({"kind": kind, "count": text})
        out.append({"report": report, "stages": rows})
    return out


def section_seed_models(src):
    """Every seed architecture beside the four 002 models: results/<preset>/seed_models.json (each
    report's tuning replayed on validation, then the evaluation's rounds), with the numbers the
    reports published (quoted) and the paired difference with the reference, NetWSAL."""
    from lib.experiments import paired_family

    study = _later_study(src, "seed_models", "seed-models", ("models", "tuning", "main_models", "reference"))
    if study is None:
        return None
    main = src.evaluation["protocols"]["common"]["models"]
    for name, entry in study["main_models"].items():
        if name not in main or main[name]["mean_acc"] != entry["mean_acc"]:
            raise _stale(src, "seed_models", "seed-models", f"was not made from {src.folder / 'evaluation.json'} "
                                                            f"({name} differs)")
    reference = study["reference"]
    # one family: every architecture against the reference, paired by round, Holm-corrected
    versus = {c["b"]: c for c in paired_family({**study["models"], **main},
                                               [(reference, n, n) for n in (*main, *study["models"]) if n != reference])}
    quoted_numbers = {m["model"]: m for block in read_json(PUBLISHED)["reports"].values() for m in block["models"]}

    default_aux = src.evaluation["preset"]["aux_weight"]

    def row(name, report, e, published, published_kind, versus):
        config = e["config"]
        own_aux = "mean_digit_acc" in e and config.get("aux_weight") != default_aux  # an auxiliary model's own λ
        return {"model": name, "report": report, "params": count(e["nb_parameters"]),
                "optimizer": config["optimizer"], "lr": lr_text(config["lr"]), "batch_size": config["batch_size"],
                "options": options_text(config.get("model_options"), config.get("aux_weight") if own_aux else None),
                "acc": pm(e["mean_acc"], e["std_acc"]), "mean_acc": e["mean_acc"],
                "max_acc": pm(e["mean_max_acc_over_epochs"], e["std_max_acc_over_epochs"]),
                "mean_max_acc": e["mean_max_acc_over_epochs"],
                "published": published, "published_kind": published_kind,
                "is_reference": name == reference, "vs": None if name == reference else _versus(versus),
                "n_rounds": e["n_rounds"], "diverged": e["diverged_rounds"]}

    rows = []
    for name in study["main_models"]:
        e = main[name]
        quoted = quoted_numbers.get(name)
        rows.append(row(name, "002", e, pm(quoted["mean"], quoted["pm"], scale=1) if quoted else None,
                        "error" if quoted else None, versus.get(name)))
    for name, e in study["models"].items():
        quoted = quoted_numbers.get(name)
        rows.append(row(name, e["report"], e, pm(quoted["mean"], quoted["pm"], scale=1) if quoted else None,
                        "max_val" if quoted else None, versus.get(name)))
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
        "tuning": _stages_by_report(study["tuning"]), "tuning_runs": count(tuning_runs),
        "tuning_epochs": stage0["epochs"], "tuning_rounds": len(stage0["seeds"]), "aux_weight": f"{default_aux:g}",
        "tuning_seeds": seeds_text(stage0["seeds"]) if stage0["seeds"] else "n/a",
        "nb_rounds": len(study["seeds"]), "wall_min": minutes(study["wall_time_s"]),
        "diverged": sum(r["diverged"] for r in seed_rows),
    }


def recipe(config):
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
    import numpy as np

    from lib.experiments import describe_run, merge_records

    paths = [src.folder / "runs" / name for name in entry["runs"]]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise _stale(src, "confirmation", "confirm", f"names run files that are missing ({', '.join(missing)})")
    rebuilt = describe_run(merge_records([read_json(p) for p in paths]))
    same = rebuilt["seeds"] == entry["seeds"] and np.allclose(
        np.array(rebuilt["test_acc"], dtype=float), np.array(entry["test_acc"], dtype=float), equal_nan=True)
    if not same:
        raise _stale(src, "confirmation", "confirm", "does not match the run files it names")
    return {**entry, "curves": rebuilt["curves"], "diverged_epoch": rebuilt["diverged_epoch"],
            "failed_rounds": rebuilt["failed_rounds"]}


def best_numbers(src):
    """The best model's numbers, the ONE place the report reads its files (point it at a new layout):

        development   best.json: both tracks on the evaluation's rounds (seen while the recipe was made)
        recipe        best_recipe.json: the frozen recipe, its tuning table (ablation, vs_current), its block
        confirmation  confirmation.json: both tracks and NetWSAL (common and own setting) on the block,
                      each entry with its curves rebuilt from its run files; None before `confirm` ran
        reference     the reference model's name (NetWSAL)

        recipes       {track: its frozen recipe} (best_recipe.json for the course track, and for both
                      when they were frozen together; best_recipe_<track>.json once a track has its own)
        confirmations {track: the confirmation of its current recipe, curves rebuilt}; a track not
                      confirmed yet is left out
        blocks        the confirmation blocks used by every track together ({block, seeds, recipe_sha256})
        ablation      every step tried, from the recipes (lib.best.tried_steps); [] before any is frozen

    None when best.json does not exist."""
    from lib.best import TRACKS, confirmed_blocks, track_confirmations, track_recipe_path, tried_steps

    study = _later_study(src, "best", "best", ("ablation", "tracks", "limits", "reference"))
    if study is None:
        return None
    recipe = src.optional("best_recipe")
    if recipe is not None and recipe.get("recipe_sha256") != study.get("recipe_sha256"):
        raise _stale(src, "best", "best", f"was not made with the frozen recipe of {src.folder / 'best_recipe.json'}")
    confirmation = src.optional("confirmation")
    if confirmation is not None:
        if confirmation.get("kind") != "confirmation" or recipe is None or \
                confirmation.get("recipe_sha256") != recipe["recipe_sha256"]:
            raise _stale(src, "confirmation", "confirm", "is not the confirmation of the frozen recipe in "
                                                         f"{src.folder / 'best_recipe.json'}")
    rebuilt = {}  # confirmation file (by recipe hash) -> with its curves rebuilt from its runs

    def from_runs(c):
        if c["recipe_sha256"] not in rebuilt:
            rebuilt[c["recipe_sha256"]] = dict(c, tracks={t: _from_runs(src, e) for t, e in c["tracks"].items()},
                                               references={p: _from_runs(src, e) for p, e in c["references"].items()})
        return rebuilt[c["recipe_sha256"]]

    if confirmation is not None:
        confirmation = from_runs(confirmation)
    paths = {t: track_recipe_path(src.preset, t, src.results_dir) for t in TRACKS}
    return {"development": study, "recipe": recipe, "confirmation": confirmation, "reference": study["reference"],
            "recipes": {t: read_json(p) for t, p in paths.items() if p is not None},
            "confirmations": {t: from_runs(c) for t, c in track_confirmations(src.preset, src.results_dir).items()},
            "blocks": confirmed_blocks(src.preset, src.results_dir), "ablation": tried_steps(src.preset, src.results_dir)}


def best_gains(tracks, references, reference):
    """Each track against the reference under BOTH of its settings on the same rounds: the common
    setting and the reference's own best setting ({"common"/"per_model": entry}). One family, Holm
    (lib.experiments.paired_family); a track whose config repeats an earlier track's shares its
    comparisons (it is the same runs), so the family holds each comparison once."""
    from lib.experiments import paired_family

    table, pairs, same_as = {}, [], {}
    for protocol, entry in references.items():
        table[f"{reference} ({protocol})"] = entry
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
        ref = references[protocol]
        out.setdefault(c["b"], {})[protocol] = dict(_comparison(c), setting=f"{ref['optimizer']} {lr_text(ref['lr'])}",
                                                    acc=pm(ref["mean_acc"], ref["std_acc"]))
    for track, earlier in same_as.items():
        out[track] = out[earlier]
    return out


def _track_numbers(e, gains):
    return {"model": e["model"], "acc": pm(e["mean_acc"], e["std_acc"]), "err": pm(e["mean_err"], e["std_err"]),
            "mean_acc": pct(e["mean_acc"]), "params": count(e["nb_parameters"]), "epochs": e["config"]["epochs"],
            "cpu_min": f"{e['cpu_minutes_per_round']:.2f}", "within_limits": e["within_limits"],
            "recipe": recipe(e["config"]), "vs_both": gains, "n_rounds": e["n_rounds"], "diverged": e["diverged_rounds"]}


def section_best(src):
    """The best model. Headline: the frozen recipe's one-shot confirmation block (confirmation.json),
    with NetWSAL under the common setting and under its own best setting on the same block; beside
    it, labelled, the development evaluation (best.json: the evaluation's rounds). The tuning table
    (each step's paired validation gain and the keep rule) comes from best_recipe.json. Whether each
    track reached its goal (lib.best.GOALS) is a boolean here, so the text picks its words."""
    from lib.best import GOALS, KEEP_CONFIDENCE, KEEP_MARGIN

    best = best_numbers(src)
    if best is None:
        return None
    study, frozen, confirmation = best["development"], best["recipe"], best["confirmation"]
    recipes, confirmations = best["recipes"], best["confirmations"]
    reference = best["reference"]
    published = read_json(PUBLISHED)["best_for_protocol"]
    protocols = src.evaluation["protocols"]
    dev_refs = {p: block["models"][reference] for p, block in protocols.items() if reference in block["models"]}
    dev_gains = best_gains(study["tracks"], dev_refs, reference)
    development = {t: _track_numbers(e, dev_gains.get(t, {})) for t, e in study["tracks"].items()}
    # Each track's headline: the confirmation of its current recipe (each file's tracks one Holm
    # family, as when it was written); a track not confirmed yet shows its development numbers.
    headline, headline_entries, blocks = {}, {}, {}
    for track, e in study["tracks"].items():
        c = confirmations.get(track)
        if c is None:
            headline[track], headline_entries[track] = development[track], e
            continue
        gains = best_gains(c["tracks"], c["references"], reference)
        headline[track], headline_entries[track] = _track_numbers(c["tracks"][track], gains.get(track, {})), c["tracks"][track]
        blocks[track] = {"confirmed": True, "block": c["block"], "block_seeds": seeds_text(c["seeds"]),
                         "block_rounds": len(c["seeds"]),
                         "references": {p: {"setting": f"{r['optimizer']} {lr_text(r['lr'])}",
                                            "acc": pm(r["mean_acc"], r["std_acc"])} for p, r in c["references"].items()}}
    tracks = {}
    for track, t in headline.items():
        e = headline_entries[track]
        theirs = []
        for p in published["results"] if e["mean_acc"] is not None else ():
            diff = 100 * e["mean_acc"] - p["mean"]  # percentage points
            theirs.append({"label": p["label"], "value": pm(p["mean"], p["pm"], digits=1, scale=1),
                           "diff": f"{diff:+.2f}".replace("-", "−"), "size": f"{abs(diff):.2f}",
                           "higher": diff > 0, "within_spread": abs(diff) <= p["pm"]})
        goal = GOALS.get(track)
        own = recipes.get(track)
        # the development rounds ran this track's current recipe only when best.json has its config
        same_recipe = own is None or own["tracks"][track]["config"] == study["tracks"][track]["config"]
        tracks[track] = dict(t, published=theirs, above_all_published=bool(theirs) and all(x["higher"] for x in theirs),
                             goal=pct(goal, 1) if goal is not None else None,
                             goal_reached=goal is not None and e["mean_acc"] is not None and e["mean_acc"] >= goal,
                             development=development.get(track) if same_recipe else None,
                             recipe_hash=(own or frozen or study).get("recipe_sha256", "")[:12] or "n/a",
                             **blocks.get(track, {"confirmed": False}))
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
    selection = (frozen or {}).get("selection", {"confidence": KEEP_CONFIDENCE, "margin": KEEP_MARGIN})
    not_tried = recipes.get("open", frozen or {}).get("steps_not_tried", [])
    # the open track shown as the course track's row: the same config, on the same rounds
    open_same = "open" in headline_entries and "course" in headline_entries and \
        headline_entries["open"]["config"] == headline_entries["course"]["config"] and \
        headline_entries["open"]["seeds"] == headline_entries["course"]["seeds"]
    limits = study["limits"]
    first = ablation_rows[0]
    out = {
        "confirmed": confirmation is not None, "all_confirmed": all(t["confirmed"] for t in tracks.values()),
        "blocks_split": len({t.get("block") for t in tracks.values() if t["confirmed"]}) > 1,
        "ablation": ablation, "kept": [r["step"] for r in ablation if r["kept"] and not r["first"]],
        "nb_steps": len(ablation) - 1, "tracks": tracks, "reference": reference,
        "keep_confidence": f"{100 * selection['confidence']:g}", "keep_margin": f"{selection['margin']:g}",
        "open_same_as_course": open_same, "steps_not_tried": not_tried, "open_tried": not not_tried,
        "limits": {"params": count(limits["course_parameters"]), "epochs": limits["course_epochs"],
                   "cpu_min": f"{limits['open_cpu_minutes_per_round']:g}"},
        "tuning_rounds": len(first["seeds"]), "tuning_seeds": seeds_text(first["seeds"]),
        "tuning_epochs": first["config"]["epochs"],
        "dev_rounds": len(study["seeds"]), "dev_seeds": seeds_text(study["seeds"]),
        "dev_references": {p: {"setting": f"{e['optimizer']} {lr_text(e['lr'])}", "acc": pm(e["mean_acc"], e["std_acc"])}
                           for p, e in dev_refs.items()},
        "recipe_hash": (frozen or study).get("recipe_sha256", "")[:12] or "n/a",
        "published": {"source": published["source"], "caveat": published["caveat"],
                      "results": [{"label": p["label"], "recipe": p["recipe"],
                                   "value": pm(p["mean"], p["pm"], digits=1, scale=1)} for p in published["results"]]},
        "wall_min": minutes(study["wall_time_s"]),
    }
    if frozen is not None:
        out.update(block=frozen["block"], block_seeds=seeds_text(frozen["seeds"]), block_rounds=len(frozen["seeds"]))
    if confirmation is not None:
        ledger = best["blocks"]
        out.update(block=confirmation["block"], block_seeds=seeds_text(confirmation["seeds"]),
                   block_rounds=len(confirmation["seeds"]), blocks_used=len(ledger),
                   blocks=", ".join(str(b["block"]) for b in ledger),
                   references={p: {"setting": f"{e['optimizer']} {lr_text(e['lr'])}", "acc": pm(e["mean_acc"], e["std_acc"])}
                               for p, e in confirmation["references"].items()},
                   confirm_min=minutes(confirmation["wall_time_s"]))
    return out


def section_size(src):
    """The training-set size study (lib.when_study, size.json)."""
    from lib.when_study import size_numbers

    study = _later_study(src, "size", "size-study", ("sizes", "setting"))
    return None if study is None else size_numbers(study)


def section_aux_weight(src):
    """The auxiliary-weight study (lib.when_study, aux_weight.json)."""
    from lib.when_study import aux_numbers

    study = _later_study(src, "aux_weight", "aux-study", ("models", "weights"))
    return None if study is None else aux_numbers(study)


def section_errors(src):
    """What the networks get wrong (lib.when_study, errors.json)."""
    from lib.when_study import error_numbers

    study = _later_study(src, "errors", "error-study", ("models",))
    return None if study is None else error_numbers(study)


SECTIONS = (
    ("meta", section_meta),
    ("data", section_data),
    ("models", section_models),
    ("training", section_training),
    ("grid", section_grid),
    ("results", section_results),
    ("overfitting", section_overfitting),
    ("failures", section_failures),
    ("published", section_published),
    ("seed_models", section_seed_models),
    ("best", section_best),
    ("size", section_size),
    ("aux_weight", section_aux_weight),
    ("errors", section_errors),
)


def collect(src):
    """numbers: {section name: its dict}, sections returning None left out."""
    numbers = {}
    for name, function in SECTIONS:
        value = function(src)
        if value is not None:
            numbers[name] = value
    return numbers


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------


def prepare(src):
    """Fill the build folder: the typst sources, numbers.json, figures/. Returns the numbers."""
    from lib.plots import _save_atomic, architecture_diagram

    numbers = collect(src)  # first: a missing results file stops the build before anything is written
    shown = (*RESULT_FIGURES, *(f for section, figures in SECTION_FIGURES.items() if section in numbers
                                for f in ((figures,) if isinstance(figures, str) else figures)))
    figure_paths = {name: src.figure(name) for name in shown}
    build = Path(src.build_dir)
    figures = build / "figures"
    if figures.exists():
        shutil.rmtree(figures)  # no figure of an earlier build survives
    figures.mkdir(parents=True)
    for name, path in figure_paths.items():
        shutil.copyfile(path, figures / f"{name}.pdf")
    _save_atomic(architecture_diagram(DIAGRAM_MODELS), figures / "architecture.pdf")
    from pypdf import PdfReader

    # each figure with the width it was drawn at: report.typ places it at exactly that width (`fig`),
    # so a font size in the figure is its size in print
    numbers["figures"] = {name: {"path": f"figures/{name}.pdf",
                                 "width": round(float(PdfReader(figures / f"{name}.pdf").pages[0].mediabox.width) / 72, 4)}
                          for name in (*figure_paths, "architecture")}
    numbers["diagram_models"] = list(DIAGRAM_MODELS)
    for source in REPORT_DIR.glob("*.typ"):
        shutil.copyfile(source, build / source.name)
    write_json_atomic(build / "numbers.json", numbers)
    return numbers


def compile_pdf(build_dir, output):
    """typst: <build_dir>/report.typ -> output (written atomically). The PDF's date is the evaluation's,
    so unchanged results give the same file."""
    import typst

    build_dir, output = Path(build_dir), Path(output)
    numbers = json.loads((build_dir / "numbers.json").read_text())
    stamp = numbers["meta"].get("written_at")
    timestamp = datetime.fromisoformat(stamp) if stamp else None
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".pdf")
    os.close(fd)  # typst writes the file itself
    try:
        typst.compile(str(build_dir / "report.typ"), output=tmp, root=str(build_dir), ignore_system_fonts=True,
                      timestamp=timestamp)
        os.chmod(tmp, 0o644)  # mkstemp made it private; the report is for everyone
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output


def build(preset="course", results_dir=None, figures_dir=None, output=None, build_dir=None):
    """Collect, draw, compile: returns the path of the PDF."""
    src = Sources(get_preset(preset).name, Path(results_dir or RESULTS_DIR),
                  Path(figures_dir or PROJECT_ROOT / "figures"), Path(build_dir or BUILD_DIR))
    prepare(src)
    return compile_pdf(src.build_dir, output or OUTPUT)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lib.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="course", help="whose results to report (default: course)")
    parser.add_argument("--results-dir", default=None, help="results folder (default: the project's results/)")
    parser.add_argument("--figures-dir", default=None, help="figures folder (default: the project's figures/)")
    parser.add_argument("--build-dir", default=None, help="build folder (default: report/build/)")
    parser.add_argument("--output", default=None, help="the PDF (default: report.pdf at the top level)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        path = build(args.preset, args.results_dir, args.figures_dir, args.output, args.build_dir)
    except (ValueError, ResultsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # typst.TypstError: the message and where in the .typ source
        if type(error).__name__ != "TypstError":
            raise
        print(f"error: typst could not compile the report: {error}", file=sys.stderr)
        return 3
    from pypdf import PdfReader

    pages = len(PdfReader(path).pages)
    print(f"wrote {path} ({pages} pages, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
