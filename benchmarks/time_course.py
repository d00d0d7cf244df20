"""Estimate the wall time of the whole `course` preset (grid + evaluation) from a measured sample.

    python benchmarks/time_course.py [--cells 4]

Trains, in a temporary results folder and with the preset's own settings and worker processes,
`--cells` grid cells (one per model, the common optimizer Adam lr 0.001: 10 rounds x 25 epochs,
validation and test every 5 epochs) and one evaluation run per model (20 rounds x 25 epochs,
evaluated every epoch). Prints the measured times and the extrapolation to the 60 grid cells and
the evaluation's runs, next to what the committed results record (`results/course/*.json`), which
were computed while other jobs shared the machine.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.experiments import (PROJECT_ROOT, default_workers, get_preset, run_many)  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=4, help="grid cells to time (one per model, then repeats)")
    args = parser.parse_args(argv)
    preset = get_preset("course")
    workers = default_workers(preset.device)
    models = [preset.models[k % len(preset.models)] for k in range(args.cells)]
    with tempfile.TemporaryDirectory() as folder:
        grid_jobs = [(preset.config(m, "Adam", 0.001, eval_every=preset.grid_eval_every), preset.grid_seeds)
                     for m in models]
        start = time.perf_counter()
        run_many(grid_jobs, folder, workers=workers, progress=True, desc="grid sample")
        grid_s = time.perf_counter() - start
        eval_jobs = [(preset.config(m, "Adam", 0.001, eval_every=1), preset.eval_seeds) for m in preset.models]
        start = time.perf_counter()
        run_many(eval_jobs, folder, workers=workers, progress=True, desc="evaluation sample")
        eval_s = time.perf_counter() - start
    nb_cells = len(preset.models) * len(preset.optimizers) * len(preset.lrs)
    grid = json.loads((PROJECT_ROOT / "results/course/grid.json").read_text())
    evaluation = json.loads((PROJECT_ROOT / "results/course/evaluation.json").read_text())
    nb_eval_runs = len({(e["model"], e["optimizer"], e["lr"]) for p in evaluation["protocols"].values()
                        for e in p["models"].values()})
    grid_estimate = grid_s / len(grid_jobs) * nb_cells
    eval_estimate = eval_s / len(eval_jobs) * nb_eval_runs
    print(f"workers: {workers}")
    print(f"grid: {len(grid_jobs)} cells in {grid_s:.0f} s -> {nb_cells} cells ~ {grid_estimate / 60:.1f} min "
          f"(committed run: {grid['wall_time_s'] / 60:.1f} min)")
    print(f"evaluation: {len(eval_jobs)} runs in {eval_s:.0f} s -> {nb_eval_runs} runs ~ {eval_estimate / 60:.1f} min "
          f"(committed run: {evaluation['wall_time_s'] / 60:.1f} min)")
    print(f"course preset, grid + evaluation: ~{(grid_estimate + eval_estimate) / 60:.1f} min (extrapolated)")


if __name__ == "__main__":
    main()
