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
exist); SECTIONS lists them in order. To add one (e.g. the comparison of every seed architecture,
from results/<preset>/seed_models.json): fill in its function, and in report/report.typ add
`#if "<name>" in N { ... }` where it belongs; the document shows the part only when the numbers
are there.
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
CI_LEVEL = 95  # lib.experiments.compare gives the 95% t-interval of the mean paired difference
ALPHA = 0.05  # the significance level the text uses, Bonferroni-corrected over each protocol's comparisons
# figures/<preset>_<name>.pdf the report shows, drawn by `python -m lib figures` (lib.plots.draw_all)
RESULT_FIGURES = ("grid", "boxplot", "curves")
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
    """Where the numbers come from: preset, commit, software, machine, training times."""
    grid, evaluation = src.grid, src.evaluation
    prov = evaluation["provenance"]
    return {
        "preset": evaluation["preset"]["name"],
        "results_folder": f"results/{evaluation['preset']['name']}",
        "git_commit": (prov.get("git_commit") or "unknown")[:12] + (
            ", with uncommitted changes to lib/" if "uncommitted" in (prov.get("git_commit") or "") else ""),
        "torch": prov.get("torch"), "python": prov.get("python"), "device": prov.get("device"),
        "cpu_threads": prov.get("cpu_threads"), "written_at": prov.get("written_at"),
        "grid_training_min": minutes(grid["training_time_s"]),
        "eval_training_min": minutes(evaluation["training_time_s"]),
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


def _verdict(c):
    """'up', 'down' (the CI excludes zero) or 'unclear': typst words its sentences from this and the CI."""
    if not c.get("ci95"):
        return "unclear"
    lo, hi = c["ci95"]
    return "up" if lo > 0 else "down" if hi < 0 else "unclear"


def section_results(src):
    """Per protocol: mean ± std test accuracy and error per model, and the paired comparisons."""
    evaluation = src.evaluation
    out = {}
    for protocol, block in evaluation["protocols"].items():
        rows = []
        for name, e in block["models"].items():
            rows.append({
                "model": name, "optimizer": e["optimizer"], "lr": lr_text(e["lr"]),
                "acc": pm(e["mean_acc"], e["std_acc"]), "err": pm(e["mean_err"], e["std_err"]),
                "mean_acc": e["mean_acc"], "mean_err": e["mean_err"], "std_err": e["std_err"],
                "err_mean": pct(e["mean_err"]), "err_std": pct(e["std_err"]),
                "max_acc": pm(e["mean_max_acc_over_epochs"], e["std_max_acc_over_epochs"]),
                "val_acc": pm(e["mean_val_acc"], e["std_val_acc"]),
                "digit_acc": pm(e["mean_digit_acc"], e["std_digit_acc"]) if "mean_digit_acc" in e else None,
                "worst_err": pct(1 - min(a for a in e["test_acc"] if a is not None)) if e["n_rounds"] else "n/a",
                "n_rounds": e["n_rounds"], "diverged": e["diverged_rounds"], "params": count(e["nb_parameters"]),
            })
        comparisons = []
        threshold = ALPHA / max(len(block["comparisons"]), 1)
        for c in block["comparisons"]:
            ci = c.get("ci95")
            comparisons.append({
                "a": c["a"], "b": c["b"], "question": c["question"], "n_pairs": c["n_pairs"],
                "diff": points(c["mean_diff"]) if c["mean_diff"] is not None else "n/a",
                "size": f"{abs(100 * c['mean_diff']):.2f}" if c["mean_diff"] is not None else "n/a",
                "ci": f"[{points(ci[0])}, {points(ci[1])}]" if ci else "n/a",
                "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None,
                "p_paired": pvalue(c.get("paired_t_p")), "p_welch": pvalue(c.get("welch_p")),
                "significant": c.get("paired_t_p") is not None and c["paired_t_p"] < threshold,
                "verdict": _verdict(c),
            })
        best = min(rows, key=lambda r: r["mean_err"])
        out[protocol] = {"rows": rows, "comparisons": comparisons, "best": best["model"],
                         "by_error": [r["model"] for r in sorted(rows, key=lambda r: r["mean_err"])],
                         "alpha": f"{ALPHA:g}", "threshold": f"{threshold:.3g}", "nb_comparisons": len(comparisons)}
    return {"protocols": out, "ci_level": CI_LEVEL,
            "nb_rounds": evaluation["preset"]["eval_rounds"]}


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


def section_seed_models(src):
    """Every seed architecture side by side: results/<preset>/seed_models.json, from a later issue.
    Its content is not defined yet: when the file appears, fill this function in (and the part of
    report.typ that shows it); until then the part is left out."""
    if src.optional("seed_models") is not None:
        print(f"note: {src.folder / 'seed_models.json'} exists but lib/report.py has no section for it yet: "
              "left out of the report", file=sys.stderr)
    return None


def section_best(src):
    """The best model: results/<preset>/best.json, from a later issue (as section_seed_models)."""
    if src.optional("best") is not None:
        print(f"note: {src.folder / 'best.json'} exists but lib/report.py has no section for it yet: "
              "left out of the report", file=sys.stderr)
    return None


SECTIONS = (
    ("meta", section_meta),
    ("data", section_data),
    ("models", section_models),
    ("training", section_training),
    ("grid", section_grid),
    ("results", section_results),
    ("published", section_published),
    ("seed_models", section_seed_models),
    ("best", section_best),
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
    figure_paths = {name: src.figure(name) for name in RESULT_FIGURES}
    build = Path(src.build_dir)
    figures = build / "figures"
    if figures.exists():
        shutil.rmtree(figures)  # no figure of an earlier build survives
    figures.mkdir(parents=True)
    for name, path in figure_paths.items():
        shutil.copyfile(path, figures / f"{name}.pdf")
    _save_atomic(architecture_diagram(DIAGRAM_MODELS), figures / "architecture.pdf")
    numbers["figures"] = {name: f"figures/{name}.pdf" for name in (*RESULT_FIGURES, "architecture")}
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
