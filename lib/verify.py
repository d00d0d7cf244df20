"""Rerun a sample of committed runs and say how close they come: `python -m lib verify`.

    python -m lib verify --preset course              # the cheapest committed run of 3 models
    python -m lib verify --preset course --sample 12  # of 12 models; --sample 0: every run of the preset

What holds, and what this checks: a run repeated on the same machine, with the same torch version
and the same number of threads, gives bit-identical histories. On another machine (another CPU,
other oneDNN kernels) float rounding differs from the first step and training amplifies it, so
the per-round numbers differ; what must hold there is the statistics: each rerun's mean final
accuracy within the committed run's 95 % confidence interval of that mean.

Each sampled run is retrained with its own config and seeds into a temporary folder (the
committed files are only read), with the thread count its provenance records (single-threaded
worker processes for the study's runs). Per run it reports whether the history is identical, else
the largest per-round difference of final validation and test accuracy and where the rerun's
means fall against the committed intervals. The exit status is 1 when any mean falls outside.
"""
import itertools
import json
import tempfile

import numpy as np

from lib import stats
from lib.engine import TrainConfig, default_workers
from lib.experiments import RUN_FIELDS, final, get_preset, preset_dir, read_json, run_many

DEFAULT_SAMPLE = 3
METRICS = ("val_acc", "test_acc")


def committed_runs(preset, results_dir=None):
    """(file name, record) of every complete run file of the preset, in name order."""
    paths = sorted((preset_dir(preset, results_dir) / "runs").glob("*.json"))
    runs = ((path.name, read_json(path)) for path in paths)
    return [(name, run) for name, run in runs if run.get("kind") == "run" and all(k in run for k in RUN_FIELDS)]


def cost(record):
    """Training work of a run, in pair-epochs (the recorded wall times come from machines of
    different load and thread counts, so they only break ties)."""
    config = record["config"]
    return len(record["seeds"]) * config["epochs"] * config["nb_train"] * config.get("ensemble", 1)


def choose(runs, sample=DEFAULT_SAMPLE):
    """The cheapest run (by `cost`, then recorded training time, then name) of each model, cheapest
    first, for `sample` models; every run for 0."""
    ordered = sorted(runs, key=lambda item: (cost(item[1]), item[1]["wall_time_s"], item[0]))
    if not sample:
        return ordered
    cheapest = {}  # model -> its cheapest run, in the order of their costs
    for name, record in ordered:
        cheapest.setdefault(record["config"]["model"], (name, record))
    return list(cheapest.values())[:sample]


def mean_inside(committed, rerun):
    """(committed mean, its 95 % t interval, rerun mean, inside): whether the rerun's mean over its
    rounds falls inside the committed mean's interval; None when either is missing."""
    mean, interval = stats.mean_interval(committed)
    rerun_mean = stats.mean_interval(rerun)[0]
    inside = None if interval is None or rerun_mean is None else bool(interval[0] <= rerun_mean <= interval[1])
    return mean, interval, rerun_mean, inside


def finished_pairs(committed, rerun):
    """The per-round values of the rounds both runs finished (same seeds: same data), as two arrays."""
    old, new = stats.nan_array(committed), stats.nan_array(rerun)
    both = np.isfinite(old) & np.isfinite(new)
    return old[both], new[both]


def compare(committed, rerun):
    """How a rerun record compares with the committed one (a JSON-ready dict)."""
    same = json.dumps(committed["history"], sort_keys=True) == json.dumps(rerun["history"], sort_keys=True) \
        and committed["diverged_epoch"] == rerun["diverged_epoch"]
    out = {"identical": same, "rounds": len(committed["seeds"]), "metrics": {}}
    for metric in METRICS:
        old, new = final(committed, metric), final(rerun, metric)
        mean, interval, rerun_mean, inside = mean_inside(old, new)
        a, b = finished_pairs(old, new)
        out["metrics"][metric] = {
            "max_abs_diff": float(np.abs(a - b).max()) if a.size else None,
            "rounds_failed_differently": int((np.isfinite(old) != np.isfinite(new)).sum()),
            "committed_mean": mean, "committed_ci95": interval, "rerun_mean": rerun_mean, "inside": same or inside,
        }
    return out


def _threads(run):
    """The threads a committed (name, record) ran with (1 when its provenance does not say)."""
    return (run[1].get("provenance") or {}).get("cpu_threads") or 1


def verify(preset="course", sample=DEFAULT_SAMPLE, results_dir=None, progress=False):
    """Rerun the chosen runs in a temporary folder; returns {run file name: compare(...)}."""
    import torch

    preset = get_preset(preset)
    runs = choose(committed_runs(preset, results_dir), sample)
    if not runs:
        raise ValueError(f"no committed runs in {preset_dir(preset, results_dir) / 'runs'} to verify")
    report = {}
    with tempfile.TemporaryDirectory(prefix="ee559-verify-") as tmp:
        previous = torch.get_num_threads()
        try:
            for threads, group in itertools.groupby(sorted(runs, key=_threads), key=_threads):
                group = list(group)
                jobs = [(TrainConfig(**record["config"]), record["seeds"]) for _, record in group]
                if threads > 1:
                    torch.set_num_threads(threads)
                # one thread: as the study trains, in single-threaded worker processes
                reruns = run_many(jobs, tmp, workers=default_workers() if threads == 1 else 1, progress=progress,
                                  desc="verify")
                for (name, record), rerun in zip(group, reruns):
                    made = record.get("provenance") or {}
                    report[name] = dict(compare(record, rerun), threads=threads, rerun_wall_time_s=rerun["wall_time_s"],
                                        committed_with={k: made.get(k) for k in ("git_commit", "torch", "platform")})
        finally:
            torch.set_num_threads(previous)
    return {name: report[name] for name, _ in runs}


def format_report(report):
    """Lines for the terminal, and whether every mean is inside its committed interval."""
    lines, ok = [], True
    for name, entry in report.items():
        head = f"{name}: {entry['rounds']} rounds, {entry['threads']} thread(s), rerun {entry['rerun_wall_time_s']:.0f} s"
        if entry["identical"]:
            lines.append(f"{head}: identical")
            continue
        parts = []
        for metric, m in entry["metrics"].items():
            ok &= m["inside"] is not False
            where = {True: "inside", False: "OUTSIDE", None: "no interval"}[m["inside"]]
            ci = m["committed_ci95"]
            interval = f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else ""
            diff = "n/a" if m["max_abs_diff"] is None else f"{100 * m['max_abs_diff']:.2f}"
            failed = f", {m['rounds_failed_differently']} round(s) diverged in one run only" \
                if m["rounds_failed_differently"] else ""
            parts.append(f"{metric.split('_')[0]}: max per-round diff {diff} points{failed}; mean "
                         f"{100 * m['rerun_mean']:.2f} % vs committed {100 * m['committed_mean']:.2f} %{interval}, {where}")
        made = entry["committed_with"]
        lines.append(f"{head}: not identical (committed by commit {str(made['git_commit'])[:12]}, torch {made['torch']}, "
                     f"on {made['platform']})\n    " + "\n    ".join(parts))
    identical = sum(e["identical"] for e in report.values())
    lines.append(f"{len(report)} runs: {identical} identical, {len(report) - identical} not; "
                 + ("every mean inside its committed 95 % interval" if ok else "a mean falls OUTSIDE its committed interval"))
    return "\n".join(lines), ok
