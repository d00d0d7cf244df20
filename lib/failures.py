"""Failed rounds: which rounds of the evaluation failed, and whether data or optimisation made them fail.

A round fails by the rule of `lib.stats.failure_reason` (decided on validation accuracy). Each
failed round of the evaluation's common protocol is a *case*. Two measurements tell data from
optimisation, both on the case's own seed, hence on the same training, validation and test pairs:

- the other models of the evaluation on that round: if they learn these pairs, the data can be learned;
- the failed model retrained alone on that round (one-round runs, cached like every run): first
  with the same setting (the round must fail again: training is deterministic), then with other
  optimizers and learning rates (RERUN_SETTINGS). If another setting learns, the failure belongs to
  the optimisation (this initialisation under this setting), not to the data.

    python -m lib failures --preset course      # writes results/<preset>/failures.json
"""
import time
from dataclasses import asdict

import numpy as np

from lib import stats
from lib.engine import default_workers
from lib.experiments import (CACHE_VERSION, final, get_preset, load_evaluation, preset_dir,
                             provenance, run_many, run_path, write_if_changed)
from lib.stats import lr_text, minutes, pct
from lib.study import Command, Study

# (optimizer, lr, why): the first is filled in with the case's own setting (determinism check)
RERUN_SETTINGS = (("Adam", 5e-4, "half the learning rate"), ("Adam", 5e-3, "five times the learning rate"),
                  ("Adagrad", 5e-3, "another optimizer"))
PROTOCOL = "common"


def _number(v):
    return None if np.isnan(v) else float(v)


def _cause(case):
    """'optimisation', 'data', 'unclear' or 'not reproducible', from the measurements of one case
    (rule in the module doc)."""
    others_learn = all(not o["failed"] for o in case["same_round_other_models"])
    other_setting_learns = any(not r["failed"] for r in case["reruns"][1:])
    if others_learn == other_setting_learns:
        return "optimisation" if others_learn else "data"
    return "unclear" if case["fails_again"] else "not reproducible"


def failure_study(preset="course", force=False, results_dir=None, progress=True, workers=None, cases=None):
    """Count the failed rounds of every evaluated model (both protocols, with their seeds), rerun each
    failed round of the common protocol (or the given `cases`: [(model, seed)]) and write failures.json."""
    preset = get_preset(preset)
    evaluation = load_evaluation(preset, results_dir)
    start = time.perf_counter()
    counts = {protocol: {name: e["failed_rounds"] for name, e in block["models"].items()}
              for protocol, block in evaluation["protocols"].items()}
    table = evaluation["protocols"][PROTOCOL]["models"]
    if cases is None:
        cases = [(name, f["seed"]) for name, failed in counts[PROTOCOL].items() for f in failed]
    def settings(model):  # the case's own setting first: the round must fail again
        return [(table[model]["optimizer"], table[model]["lr"], "the same setting again"), *RERUN_SETTINGS]

    jobs = [(preset.config(model, optimizer, lr, eval_every=1), [seed]) for model, seed in cases
            for optimizer, lr, _ in settings(model)]
    workers = default_workers(preset.device) if workers is None else workers
    records = run_many(jobs, preset_dir(preset, results_dir), force=force, workers=workers, progress=progress,
                       desc=f"failed rounds ({preset.name})")
    out = []
    for i, (model, seed) in enumerate(cases):
        own = table[model]
        r = own["seeds"].index(seed)
        case = {"model": model, "seed": seed, "round": r, "optimizer": own["optimizer"], "lr": own["lr"],
                "reason": stats.failure_reason(final(own, "val_acc"))[r],
                "val_acc": _number(final(own, "val_acc")[r]), "test_acc": own["test_acc"][r],
                "same_round_other_models": [
                    {"model": name, "val_acc": _number(final(entry, "val_acc")[r]), "test_acc": entry["test_acc"][r],
                     "failed": r in {f["round"] for f in entry["failed_rounds"]}}
                    for name, entry in table.items() if name != model],
                "reruns": []}
        # one round alone: 'never learned' and 'diverged' apply; 'stuck' is judged against the
        # healthy rounds of the evaluation (the rule's median), so the rerun is judged the same way
        reference = [v for k, v in enumerate(final(own, "val_acc")) if k != r]
        k = i * len(settings(model))
        for (optimizer, lr, why), (config, seeds), record in zip(settings(model), jobs[k:], records[k:]):
            val = final(record, "val_acc")[0]
            reason = stats.failure_reason(np.append(reference, val), [None] * len(reference) + [
                record["diverged_epoch"][0]])[-1]
            case["reruns"].append({"optimizer": optimizer, "lr": lr, "why": why, "val_acc": _number(val),
                                   "test_acc": _number(final(record, "test_acc")[0]),
                                   "train_acc": _number(final(record, "train_acc")[0]),
                                   "failed": reason is not None, "reason": reason,
                                   "run": run_path(config, seeds, "").name})
        # trained alone rather than stacked with the other rounds, float rounding may move the
        # numbers a little: 'fails again' is what reproducing the failure means here
        case["fails_again"] = case["reruns"][0]["failed"]
        case["cause"] = _cause(case)
        out.append(case)
    study = {
        "kind": "failures", "cache_version": CACHE_VERSION, "preset": asdict(preset), "seeds": preset.eval_seeds,
        "rule": {"majority_rate": stats.MAJORITY_RATE, "never_learned_margin": stats.NEVER_LEARNED_MARGIN,
                 "stuck_margin": stats.STUCK_MARGIN, "min_rounds_for_stuck": stats.MIN_ROUNDS_FOR_STUCK,
                 "decided_on": "final-epoch validation accuracy (lib.stats.failure_reason)"},
        "failed_rounds": counts, "protocol": PROTOCOL, "cases": out,
        "wall_time_s": time.perf_counter() - start,
        "training_time_s": float(sum(r["wall_time_s"] for r in records)),
        "provenance": provenance(records[-1]["device"] if records else None),
    }
    return write_if_changed(preset_dir(preset, results_dir) / "failures.json", study,
                            ("preset", "seeds", "failed_rounds", "cases"))


def _command(args):
    study = failure_study(args.preset, force=args.force, results_dir=args.results_dir)
    for case in study["cases"]:
        print(f"failed round: {case['model']} seed {case['seed']} ({case['reason']}): cause {case['cause']}")


def section(src):
    """numbers['failures']: the failed-round rule and its measured explanation (failures.json)."""
    rule = {"majority": pct(stats.MAJORITY_RATE, 0), "never": pct(stats.MAJORITY_RATE + stats.NEVER_LEARNED_MARGIN, 0),
            "stuck": pct(stats.STUCK_MARGIN, 0), "min_rounds": stats.MIN_ROUNDS_FOR_STUCK}
    study = src.optional("failures")
    if study is None:
        return {"rule": rule, "cases": []}
    if study["seeds"] != src.evaluation["seeds"]:
        raise src.stale("failures", "failures", "was not made from the evaluation's rounds")
    cases = [{
        "model": c["model"], "seed": c["seed"], "reason": c["reason"], "val_acc": pct(c["val_acc"], 1),
        "test_acc": pct(c["test_acc"], 1), "setting": f"{c['optimizer']} {lr_text(c['lr'])}",
        "others": [{"model": o["model"], "val_acc": pct(o["val_acc"], 1)} for o in c["same_round_other_models"]],
        "others_learn": all(not o["failed"] for o in c["same_round_other_models"]),
        "reruns": [{"setting": f"{r['optimizer']} {lr_text(r['lr'])}", "why": r["why"],
                    "val_acc": pct(r["val_acc"], 1), "test_acc": pct(r["test_acc"], 1),
                    "train_acc": pct(r["train_acc"], 1), "failed": r["failed"],
                    "reason": r["reason"] or "learned"} for r in c["reruns"]],
        "fails_again": c["fails_again"], "cause": c["cause"],
    } for c in study["cases"]]
    return {"rule": rule, "cases": cases, "causes": sorted({c["cause"] for c in cases}),
            "training_min": minutes(study["training_time_s"])}


STUDY = Study(name="failures", files=(("failures", "failures"),),
              commands=(Command("failures", "count the failed rounds and rerun them with other settings", _command,
                                in_all=True),),
              sections=(("failures", section, ()),))
