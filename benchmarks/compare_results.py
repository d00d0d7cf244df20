"""Compare a results folder (e.g. the study rerun on a GPU) with the committed one.

    python benchmarks/compare_results.py NEW_RESULTS_DIR [--reference results] [--preset course] [--json]

Reads `<dir>/<preset>/evaluation.json` (and grid.json) of both folders, as `python -m lib grid
--results-dir DIR` then `evaluate` write them. For each model of each protocol of the evaluation:
the new mean test accuracy, the reference's mean with its 95 % t interval (of the mean over its
rounds), whether the new mean falls inside it, and, when both ran the same setting on the same
seeds, the paired per-round difference and how many rounds came out identical. It also says
whether the grid search chose the same settings and whether both used the same MNIST files (by
md5): another training file gives other pairs, and then nothing here is comparable.

Exit status: 0 when the data are the same and every new mean is inside its reference interval,
1 otherwise, 2 when a results file is missing or unreadable.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib import experiments, stats, verify  # noqa: E402


def _md5s(evaluation):
    pools = evaluation.get("provenance", {}).get("data_pools", {})
    return {split: pool.get("md5") for split, pool in pools.items()}


def _device(evaluation):
    p = evaluation.get("provenance", {})
    return {k: p.get(k) for k in ("device", "gpu", "cuda", "torch", "platform")}


def compare(new_dir, reference_dir=None, preset="course"):
    """The comparison as a dict (see format_report); raises experiments.ResultsError when a file
    is missing or unreadable."""
    new = experiments.load_evaluation(preset, new_dir)
    ref = experiments.load_evaluation(preset, reference_dir)
    out = {"preset": experiments.get_preset(preset).name,
           "new_dir": str(experiments.preset_dir(preset, new_dir)),
           "reference_dir": str(experiments.preset_dir(preset, reference_dir)),
           "new_device": _device(new), "reference_device": _device(ref),
           "same_data": _md5s(new) == _md5s(ref), "new_md5": _md5s(new), "reference_md5": _md5s(ref),
           "new_training_time_s": new.get("training_time_s"), "reference_training_time_s": ref.get("training_time_s"),
           "same_grid_choice": new["grid_choice"] == ref["grid_choice"] or _same_choice(new, ref),
           "new_grid_choice": new["grid_choice"], "reference_grid_choice": ref["grid_choice"],
           "protocols": {}}
    for protocol, ref_table in ref["protocols"].items():
        new_table = new["protocols"].get(protocol, {}).get("models", {})
        rows = {}
        for model, r in ref_table["models"].items():
            n = new_table.get(model)
            ref_mean, interval, new_mean, inside = verify.mean_inside(r["test_acc"], n["test_acc"] if n else [])
            row = rows[model] = {"reference_mean": ref_mean, "reference_interval": interval,
                                 "reference_setting": f"{r['optimizer']} lr={r['lr']:g}",
                                 "n_rounds": len(r["test_acc"])}
            if n is None:
                row.update(new_mean=None, inside=False, note="missing from the new results")
                continue
            row.update(new_mean=new_mean, new_setting=f"{n['optimizer']} lr={n['lr']:g}", inside=bool(inside))
            if row["new_setting"] == row["reference_setting"] and n["seeds"] == r["seeds"]:
                a, b = verify.finished_pairs(r["test_acc"], n["test_acc"])
                row.update(paired_mean_diff=float((b - a).mean()) if a.size else None,
                           rounds_identical=int((a == b).sum()), rounds_paired=int(a.size))
            else:
                row["note"] = "another setting or other seeds: not paired"
        out["protocols"][protocol] = rows
    rows = [row for table in out["protocols"].values() for row in table.values()]
    out["nb_inside"], out["nb_models"] = sum(row["inside"] for row in rows), len(rows)
    out["ok"] = bool(out["same_data"] and out["nb_inside"] == out["nb_models"])
    return out


def _same_choice(new, ref):
    """The same optimizer and rate chosen (the validation means recorded beside may differ)."""
    def settings(choice):
        return ({"common": (choice["common"]["optimizer"], choice["common"]["lr"])}
                | {m: (c["optimizer"], c["lr"]) for m, c in choice["per_model"].items()})
    return settings(new["grid_choice"]) == settings(ref["grid_choice"])


def format_report(c):
    """The comparison as text, one line per model."""
    def where(device):
        gpu = f" ({device['gpu']}, CUDA {device['cuda']})" if device.get("gpu") else ""
        return f"device {device['device']}{gpu}, torch {device['torch']}"

    def pct(value):
        return stats.pct(value) or "-"

    lines = [f"preset {c['preset']}: {c['new_dir']} ({where(c['new_device'])})",
             f"  against {c['reference_dir']} ({where(c['reference_device'])})",
             "data: same MNIST files (md5) as the reference" if c["same_data"] else
             f"data: OTHER MNIST FILES than the reference ({c['new_md5']} vs {c['reference_md5']}): not comparable",
             "grid search: the same settings chosen as the reference" if c["same_grid_choice"] else
             f"grid search: OTHER settings chosen (common {c['new_grid_choice']['common']['optimizer']} "
             f"lr={c['new_grid_choice']['common']['lr']:g}; reference {c['reference_grid_choice']['common']['optimizer']} "
             f"lr={c['reference_grid_choice']['common']['lr']:g})"]
    for name, key in (("new", "new_training_time_s"), ("reference", "reference_training_time_s")):
        if c.get(key) is not None:
            lines.append(f"evaluation training time ({name}): {c[key]:.0f} s")
    for protocol, rows in c["protocols"].items():
        lines.append(f"protocol {protocol}: test accuracy %, mean over rounds")
        lines.append(f"  {'model':<12}{'new':>8}{'reference':>11}  {'reference 95 % interval':<24}{'inside':<8}paired")
        for model, row in rows.items():
            interval = row["reference_interval"]
            text = "-" if interval is None else f"[{pct(interval[0])}, {pct(interval[1])}]"
            if "paired_mean_diff" in row:
                diff = row["paired_mean_diff"]
                paired = (f"{'-' if diff is None else f'{100 * diff:+.2f}'} points, "
                          f"{row['rounds_identical']}/{row['rounds_paired']} rounds identical")
            else:
                paired = row.get("note", "")
            setting = row.get("new_setting", "")
            if setting and setting != row["reference_setting"]:
                paired += f" (new {setting}, reference {row['reference_setting']})"
            lines.append(f"  {model:<12}{pct(row['new_mean']):>8}{pct(row['reference_mean']):>11}  {text:<24}"
                         f"{'yes' if row['inside'] else 'NO':<8}{paired}")
    lines.append(f"{c['nb_inside']} of {c['nb_models']} new means inside the reference 95 % interval"
                 + ("" if c["same_data"] else "; the data differ"))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("new_dir", help="results folder holding <preset>/evaluation.json (the new run)")
    parser.add_argument("--reference", default=None, help="reference results folder (default: the committed results/)")
    parser.add_argument("--preset", default="course")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = parser.parse_args(argv)
    try:
        c = compare(args.new_dir, args.reference, args.preset)
    except (ValueError, experiments.ResultsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(c, indent=1) if args.json else format_report(c))
    return 0 if c["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
