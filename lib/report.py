"""report.pdf, built from the results files: the report can never disagree with them.

    python -m lib.report --preset course     # report.pdf at the top level (`make report` draws the figures first)
    python -m lib.report --preset quick --results-dir /tmp/r --figures-dir /tmp/f --output /tmp/report.pdf

1. Python (this module) collects every number the text shows from `results/<preset>/` and the numbers
   the seed reports published (`report/published.json`, quoted, never ours) into ONE file,
   `<build>/numbers.json`, formatted here once (two decimals for percentages, `p < 0.001` ...). It
   copies the preset's figures from `figures/` (drawn by `python -m lib figures`) and draws the
   architecture diagram from the model registry (`lib.plots.architecture_diagram`).
2. typst compiles `report/report.typ`, which reads numbers.json with `json(...)`: the .typ source
   holds no result typed by hand, and its sentences about effects are chosen by typst from the sign
   of the measured 95% confidence intervals.

The build folder (`report/build/` by default, git-ignored) is a complete typst project (the .typ
sources copied from `report/`, numbers.json, figures/): `typst compile report/build/report.typ`
rebuilds the PDF by hand. Edit the sources in `report/`, never the copies. Why typst rather than
LaTeX: README.md, 'Why typst for the report'.

Sections: each study of lib.studies lists its (numbers key, section(src) -> dict or None to leave the
part out, figures the part shows). The main study's are the `section_<name>` functions below; a later
study's live in its module and read its file through `Sources.later`, which checks that it was
evaluated on the evaluation's rounds. report.typ shows a later part only when its numbers are there
(`#if "<name>" in N { include ... }`).
"""
import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime
from pathlib import Path

import numpy as np

from lib import studies
from lib.data import MD5
from lib.experiments import (CHANCE, PROJECT_ROOT, RESULTS_DIR, ResultsError, atomic_path, get_preset, load_evaluation,
                             load_grid, preset_dir, read_json, write_json_atomic)
from lib.stats import ALPHA  # family-wise level of each family of comparisons (Holm)
from lib.stats import count, lr_text, minutes, pct, pm, points, pvalue, seeds_text  # noqa: F401  (report.pm ...)

REPORT_DIR = PROJECT_ROOT / "report"  # sources: report.typ, published.json
BUILD_DIR = REPORT_DIR / "build"  # numbers.json, figures, copied sources (git-ignored)
OUTPUT = PROJECT_ROOT / "report.pdf"
PUBLISHED = REPORT_DIR / "published.json"
CI_LEVEL = 95  # lib.stats.paired gives the 95% t-interval of the mean paired difference
DIAGRAM_MODELS = ("NetBase", "NetWSAL")  # the architecture figure: one panel each


# -------------------------------------------- Sources: the results files of one preset, read once


@dataclass
class Sources:
    """Where one build reads from and writes to; the results files are read once, on first use."""

    preset: str
    results_dir: Path = RESULTS_DIR
    figures_dir: Path = PROJECT_ROOT / "figures"
    build_dir: Path = BUILD_DIR

    @property
    def folder(self):
        """results/<preset>/"""
        return preset_dir(self.preset, self.results_dir)

    def _results_option(self):
        default = Path(self.results_dir).resolve() == RESULTS_DIR.resolve()
        return "" if default else f" --results-dir {self.results_dir}"

    @cached_property
    def grid(self):
        return load_grid(self.preset, self.results_dir)

    @cached_property
    def evaluation(self):
        evaluation = load_evaluation(self.preset, self.results_dir)
        if evaluation["grid_choice"] != self.grid["choice"] or evaluation["preset"] != self.grid["preset"]:
            raise self.stale("evaluation", "evaluate",
                             f"was not made from the grid search in {self.folder / 'grid.json'}")
        return evaluation

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

    def stale(self, name, command, why):
        """The error for results/<preset>/<name>.json that does not fit the others: it names the command."""
        return ResultsError(f"{self.folder / (name + '.json')} {why}: rerun `python -m lib {command} --preset "
                            f"{self.preset}{self._results_option()}`")

    def later(self, name, command, keys):
        """The dict of results/<preset>/<name>.json, checked: it holds `keys` and was trained on the rounds
        of the main evaluation (so its paired comparisons hold); None when the file does not exist."""
        study = self.optional(name)
        if study is None:
            return None
        missing = [k for k in keys if k not in study]
        if study.get("kind") != name or missing:
            raise self.stale(name, command, f"is not a complete {name} results file (missing: "
                                            f"{', '.join(missing) or 'kind'})")
        if study["seeds"] != self.evaluation["seeds"]:
            raise self.stale(name, command, f"was evaluated on seeds {seeds_text(study['seeds'])}, not on the "
                                            f"evaluation's {seeds_text(self.evaluation['seeds'])}")
        return study


# ------------ Sections: one function each, returning numbers[<name>] (None: the part is left out)


def section_meta(src):
    """Where the numbers come from: preset, the commit and date of every results file, software,
    machine, and the time of each step of the study (the build's date is the latest results file's)."""
    grid, evaluation = src.grid, src.evaluation
    prov = evaluation["provenance"]
    provenance, steps = [], []
    for name, command in studies.results_files():
        study = src.optional(name) or {}
        if "provenance" in study:  # else a missing or incomplete file: its own section says so
            commit = study["provenance"].get("git_commit") or "unknown"
            provenance.append({"file": f"{name}.json", "commit": commit.split("+")[0][:12],
                               "clean": "+" not in commit, "written_at": study["provenance"].get("written_at")})
        if "training_time_s" in study or "wall_time_s" in study:
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
            row.update(shared=arch["shared"], auxiliary=arch["auxiliary"],
                       branch="; ".join(", ".join(b["layers"]) for b in arch["branch"]),
                       branch_out=arch["branch"][-1]["shape"],
                       head="; ".join(", ".join(b["layers"]) for b in arch["head"]),
                       merge=", then ".join(arch["merge"]).replace("concat", "concatenation"),
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


def _tests_text(c, **between):
    """The pairs, differences ('n/a' for None), `between`, Holm p-values and verdict of one comparison."""
    return {"n_pairs": c["n_pairs"], "diff": points(c["mean_diff"]), "median": points(c["median_diff"]), **between,
            "t_p": pvalue(c.get("t_p_holm")), "w_p": pvalue(c.get("wilcoxon_p_holm")), "verdict": c["verdict"]}


def comparison(c):
    """One paired comparison (lib.stats.paired, after adjust_family), formatted for the text; the same
    without the failed rounds when the comparison has it."""
    ci = c.get("ci95")
    out = {"a": c.get("a"), "b": c.get("b"), "question": c.get("question"),
           **_tests_text(c, ci=f"[{points(ci[0])}, {points(ci[1])}]" if ci else "n/a",
                         wtl=f"{c['wins']}/{c['ties']}/{c['losses']}")}
    if "without_failed" in c:
        out["without_failed"] = _tests_text(c["without_failed"])
    return out


def section_results(src):
    """Per protocol: test accuracy per model (mean ± std, median and interquartile range, failed
    rounds with their seeds), and the paired comparisons with their verdicts, as the evaluation
    file stores them (lib.experiments.paired_family: lib.stats.paired, Holm, lib.stats.verdict)."""
    evaluation = src.evaluation
    out = {}
    for protocol, block in evaluation["protocols"].items():
        rows = []
        for name, e in block["models"].items():
            acc = np.array([a for a in e["test_acc"] if a is not None], dtype=float)
            failed = e["failed_rounds"]
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
                "nb_failed": len(failed), "failed": ", ".join(f"{f['seed']} ({f['reason']})" for f in failed) or "none",
            })
        comparisons = [comparison(c) for c in block["comparisons"]]
        by_error = [r["model"] for r in sorted(rows, key=lambda r: r["mean_err"])]
        out[protocol] = {"rows": rows, "comparisons": comparisons, "best": by_error[0], "by_error": by_error,
                         "nb_comparisons": len(comparisons),
                         "verdicts_differ": [f"{c['b']} − {c['a']}" for c in comparisons
                                             if c.get("without_failed", {}).get("verdict", c["verdict"]) != c["verdict"]]}
    return {"protocols": out, "ci_level": CI_LEVEL, "alpha": f"{ALPHA:g}",
            "nb_rounds": evaluation["preset"]["eval_rounds"]}


def section_overfitting(src):
    """Training against validation accuracy at the last epoch (median over the healthy rounds), and
    the first epoch at which the median training accuracy reaches 99 %, per model (common protocol)."""
    from lib.plots import failed_mask, nan_array

    rows = []
    for name, e in src.evaluation["protocols"]["common"]["models"].items():
        healthy = ~failed_mask(e)
        train, val = nan_array(e["curves"]["train_acc"])[healthy], nan_array(e["curves"]["val_acc"])[healthy]
        median_train = np.nanmedian(train, axis=0)
        reached = np.flatnonzero(median_train >= 0.99)
        t, v = float(np.nanmedian(train[:, -1])), float(np.nanmedian(val[:, -1]))
        rows.append({"model": name, "train": pct(t, 1), "val": pct(v, 1), "gap": f"{100 * (t - v):.1f}",
                     "epoch_99": int(reached[0] + 1) if reached.size else None})
    return {"rows": rows}


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


def sections():
    """(numbers key, section, its figures) of every study of lib.studies, in order."""
    return [section for study in studies.STUDIES for section in study.sections]


def collect(src):
    """numbers: {section name: its dict}, sections returning None left out."""
    return {name: value for name, function, _ in sections() if (value := function(src)) is not None}


# ------------------------------------------------------------------------------------------ Build


def prepare(src):
    """Fill the build folder: the typst sources, numbers.json, figures/. Returns the numbers."""
    from lib.plots import architecture_diagram, save_figure

    numbers = collect(src)  # first: a missing results file stops the build before anything is written
    figure_paths = {f: src.figure(f) for name, _, figures in sections() if name in numbers for f in figures}
    build = Path(src.build_dir)
    figures = build / "figures"
    if figures.exists():
        shutil.rmtree(figures)  # no figure of an earlier build survives
    figures.mkdir(parents=True)
    for name, path in figure_paths.items():
        shutil.copyfile(path, figures / f"{name}.pdf")
    save_figure(architecture_diagram(DIAGRAM_MODELS), figures / "architecture.pdf")
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
    stamp = read_json(build_dir / "numbers.json")["meta"].get("written_at")
    timestamp = datetime.fromisoformat(stamp) if stamp else None
    with atomic_path(output) as tmp:
        typst.compile(str(build_dir / "report.typ"), output=str(tmp), root=str(build_dir), ignore_system_fonts=True,
                      timestamp=timestamp)
    return output


def sources(preset="course", results_dir=None, figures_dir=None, build_dir=None):
    return Sources(get_preset(preset).name, Path(results_dir or RESULTS_DIR),
                   Path(figures_dir or PROJECT_ROOT / "figures"), Path(build_dir or BUILD_DIR))


def build(preset="course", results_dir=None, figures_dir=None, output=None, build_dir=None):
    """Collect, draw, compile: returns the path of the PDF."""
    src = sources(preset, results_dir, figures_dir, build_dir)
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
