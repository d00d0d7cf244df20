"""Command line of the study.

    python -m lib grid     --preset course [--force]   optimizer x learning-rate grid search
    python -m lib evaluate --preset course [--force]   20 fresh rounds per model, chosen settings
    python -m lib figures  --preset course             figures/ from the results files
    python -m lib summary  --preset course [--json]    mean +- std test accuracy per model
    python -m lib seed-models --preset course [--force]  every seed-report architecture, tuned and evaluated
    python -m lib tune     --preset course [--force]   the best model's forward selection; freezes its recipe
    python -m lib best     --preset course [--force]   beyond the seed reports: the best model, two tracks
                                                       (tune, freeze, development evaluation)
    python -m lib confirm  --preset course             the frozen recipe, once, on its unseen confirmation block
    python -m lib all      --preset course [--force]   grid, evaluate, seed-models, best, figures, summary
    python -m lib data-summary                         MNIST pools, target balance, sample pairs
"""
import argparse
import json
import sys


def format_summary(rows):
    """The summary as a plain-text table (the README quotes it; a test checks they agree)."""
    width = max([30] + [len(name) + 2 for name in rows])
    lines = [f"{'model':<{width}}{'test accuracy %':>18}{'error %':>9}{'rounds':>8}{'params':>9}  setting"]
    for name, row in rows.items():
        acc = f"{100 * row['mean_acc']:.2f} +- {100 * row['std_acc']:.2f}"
        setting = f"{row['optimizer']} lr={row['lr']:g}"
        lines.append(f"{name:<{width}}{acc:>18}{100 * row['mean_err']:>9.2f}{row['n_rounds']:>8}"
                     f"{row['nb_parameters']:>9}  {setting}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("grid", "optimizer x learning-rate grid search"),
                       ("evaluate", "R-round evaluation with the grid's choice"),
                       ("seed-models", "tune and evaluate every seed-report architecture"),
                       ("tune", "forward selection of the best model; freeze its recipe"),
                       ("best", "forward selection and evaluation of the best model (two tracks)"),
                       ("confirm", "the frozen best-model recipe on its unseen confirmation block"),
                       ("figures", "draw figures/ from the results files"),
                       ("summary", "print the evaluation's numbers"),
                       ("all", "grid, evaluate, figures and summary")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--preset", default="course", help="quick, course (default) or seed002")
        p.add_argument("--results-dir", default=None, help="results folder (default: the project's results/)")
        if name in ("grid", "evaluate", "seed-models", "tune", "best", "all"):
            p.add_argument("--force", action="store_true", help="recompute even when results are cached")
        if name == "summary":
            p.add_argument("--json", action="store_true", help="print one JSON object (accuracies as fractions)")
    p = sub.add_parser("data-summary", help="pool sizes and md5s, target balance, sample-pair figure")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/*.gz")
    p.add_argument("--figures", default="figures", help="where to write sample_pairs.png")
    args = parser.parse_args(argv)

    if args.command == "data-summary":
        from lib.data import print_data_summary

        print_data_summary(data_dir=args.data_dir, figures_dir=args.figures)
        return 0

    from lib import experiments
    from lib.data import MnistError

    try:
        experiments.get_preset(args.preset)
        if args.command in ("grid", "all"):
            grid = experiments.grid_search(args.preset, force=args.force, results_dir=args.results_dir)
            common = grid["choice"]["common"]
            print(f"grid search ({args.preset}): {len(grid['cells'])} cells, {grid['training_time_s']:.0f} s of training; "
                  f"common choice {common['optimizer']} lr={common['lr']:g} "
                  f"(mean validation accuracy {100 * common['mean_val_acc']:.2f} %)")
        if args.command in ("evaluate", "all"):
            evaluation = experiments.evaluate(args.preset, force=args.force, results_dir=args.results_dir)
            print(f"evaluation ({args.preset}): {evaluation['training_time_s']:.0f} s of training")
        if args.command in ("seed-models", "all"):
            from lib.seed_study import seed_models_study

            study = seed_models_study(args.preset, force=args.force, results_dir=args.results_dir)
            print(f"seed architectures ({args.preset}): {len(study['models'])} models, {study['wall_time_s']:.0f} s")
        if args.command == "tune":
            from lib.best import freeze_recipe, tune

            ablation, configs = tune(args.preset, force=args.force, results_dir=args.results_dir)
            for row in ablation[1:]:
                gain = row["vs_current"]
                print(f"{'kept' if row['kept'] else '    '} {100 * gain['gain_mean']:+.2f} "
                      f"(lower {100 * gain['gain_lower']:+.2f}) {row['step']}")
            recipe = freeze_recipe(args.preset, configs, ablation, results_dir=args.results_dir)
            print(f"frozen recipe {recipe['recipe_sha256'][:12]}: confirmation block {recipe['block']} "
                  f"(seeds {recipe['seeds'][0]}-{recipe['seeds'][-1]})")
        if args.command == "confirm":
            from lib.best import confirm

            study = confirm(args.preset, results_dir=args.results_dir)
            for track, entry in study["tracks"].items():
                print(f"confirmation block {study['block']} ({track} track): {100 * entry['mean_acc']:.2f} +- "
                      f"{100 * entry['std_acc']:.2f} % over {entry['n_rounds']} rounds")
        if args.command in ("best", "all"):
            from lib.best import best_study

            study = best_study(args.preset, force=args.force, results_dir=args.results_dir)
            for track, entry in study["tracks"].items():
                print(f"best ({track} track): {100 * entry['mean_acc']:.2f} +- {100 * entry['std_acc']:.2f} % "
                      f"over {entry['n_rounds']} rounds")
        if args.command in ("figures", "all"):
            from lib import plots

            for path in plots.draw_all(args.preset, results_dir=args.results_dir):
                print(f"wrote {path}")
        if args.command in ("summary", "all"):
            rows = experiments.summary(args.preset, results_dir=args.results_dir)
            if getattr(args, "json", False):
                print(json.dumps(rows, indent=1))
            else:
                print(format_summary(rows))
    except (ValueError, experiments.ResultsError, MnistError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
