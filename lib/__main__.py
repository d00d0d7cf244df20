"""Command line of the study.

    python -m lib grid     --preset course [--force]   optimizer x learning-rate grid search
    python -m lib evaluate --preset course [--force]   20 fresh rounds per model, chosen settings
    python -m lib failures --preset course [--force]   failed rounds counted, and the failed ones rerun
    python -m lib figures  --preset course             figures/ from the results files
    python -m lib summary  --preset course [--json]    mean +- std test accuracy per model
    python -m lib seed-models --preset course [--force]  every seed-report architecture, tuned and evaluated
    python -m lib tune     --preset course [--force]   the best model's forward selection; freezes its recipe
    python -m lib best     --preset course [--force]   beyond the seed reports: the best model, two tracks
                                                       (tune, freeze, development evaluation)
    python -m lib confirm  --preset course             the frozen recipe, once, on its unseen confirmation block
    python -m lib all      --preset course [--force]   grid, evaluate, failures, seed-models, best, figures, summary
    python -m lib verify   --preset course [--sample N]  rerun a few committed runs, compare with them
    python -m lib data-summary                         MNIST pools, target balance, sample pairs
    python -m lib size-study  --preset course [--sizes N ...]  the 002 models at 125-4000 training pairs
    python -m lib aux-study   --preset course          NetAL and NetWSAL at auxiliary weights 0-10
    python -m lib error-study --preset course          what NetAL, NetWSAL and the best model get wrong

From scratch on a 2-core CPU (course preset): grid about 10 min, evaluate about 4 min, seed-models
about 35 min, best about 40 min, failures about 1 min; `all` runs them all, so about 90 min.
Cached runs are reused.
Ctrl-C stops a study at once; the runs it finished are kept and the same command resumes.
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


def format_verdicts(evaluation):
    """The paired comparisons of the evaluation, with their verdicts (lib.stats.verdict, stored in
    evaluation.json), as a plain-text table: the README, the notebook and the report say the same."""
    from lib.stats import format_p

    lines = [f"{'comparison (b - a)':<20}{'mean':>7}{'median':>8}{'W/T/L':>8}{'t Holm':>9}{'Wilc. Holm':>11}  verdict"
             "  [without failed rounds]"]
    for protocol, block in evaluation["protocols"].items():
        lines.append(f"{protocol} protocol")
        for c in block["comparisons"]:
            name = f"{c['b']} - {c['a']}"
            lines.append(f"{name:<20}{100 * c['mean_diff']:>+7.2f}{100 * c['median_diff']:>+8.2f}"
                         f"{c['wins']:>4}/{c['ties']}/{c['losses']}{format_p(c['t_p_holm']):>9}"
                         f"{format_p(c['wilcoxon_p_holm']):>11}  {c['verdict']}  [{c['without_failed']['verdict']}]")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("grid", "optimizer x learning-rate grid search"),
                       ("evaluate", "R-round evaluation with the grid's choice"),
                       ("seed-models", "tune and evaluate every seed-report architecture"),
                       ("failures", "count the failed rounds and rerun them with other settings"),
                       ("tune", "forward selection of the best model; freeze its recipe"),
                       ("best", "forward selection and evaluation of the best model (two tracks)"),
                       ("confirm", "the frozen best-model recipe on its unseen confirmation block"),
                       ("figures", "draw figures/ from the results files"),
                       ("summary", "print the evaluation's numbers"),
                       ("all", "grid, evaluate, failures, seed-models, best, figures and summary (about 90 min "
                               "from scratch on the course preset)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--preset", default="course", help="quick, course (default) or seed002")
        p.add_argument("--results-dir", default=None, help="results folder (default: the project's results/)")
        if name in ("grid", "evaluate", "failures", "seed-models", "tune", "best", "all"):
            p.add_argument("--force", action="store_true", help="recompute even when results are cached")
        if name == "summary":
            p.add_argument("--json", action="store_true", help="print one JSON object (accuracies as fractions)")
    p = sub.add_parser("verify", help="rerun a few committed runs in a temporary folder and compare (exit 1 when "
                                      "a mean falls outside its committed 95 %% interval)")
    p.add_argument("--preset", default="course", help="quick, course (default) or seed002")
    p.add_argument("--results-dir", default=None, help="results folder (default: the project's results/)")
    p.add_argument("--sample", type=int, default=3, help="how many runs, the cheapest first (default 3; 0: all)")
    for name, text in (("size-study", "the four 002 models at several training-set sizes (lib.when_study)"),
                       ("aux-study", "NetAL and NetWSAL at several auxiliary weights (lib.when_study)"),
                       ("error-study", "confusion matrices and misclassified pairs (lib.when_study)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--preset", default="course", help="quick, course (default) or seed002")
        p.add_argument("--results-dir", default=None, help="results folder (default: the project's results/)")
        p.add_argument("--figures", default=None, help="figures folder (default: the project's figures/)")
        p.add_argument("--force", action="store_true", help="recompute even when results are cached")
        if name == "size-study":
            p.add_argument("--sizes", type=int, nargs="+", default=None,
                           help="training pairs per round (default 125 250 500 1000 2000 4000; the offline "
                                "10,000-image pool holds at most 4000 with 1000 validation pairs)")
    p = sub.add_parser("data-summary", help="pool sizes and md5s, target balance, sample-pair figure")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/*.gz")
    p.add_argument("--figures", default="figures", help="where to write sample_pairs.png")
    args = parser.parse_args(argv)

    from lib import experiments
    from lib.data import MnistError

    if args.command == "data-summary":
        from lib.data import print_data_summary

        try:
            experiments.check_writable(args.figures, "figure")
            print_data_summary(data_dir=args.data_dir, figures_dir=args.figures)
        except (experiments.ResultsError, MnistError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0

    try:
        experiments.get_preset(args.preset)
        if args.command in ("size-study", "aux-study", "error-study"):
            return when_command(args)
        if args.command == "verify":
            from lib.verify import format_report, verify

            text, ok = format_report(verify(args.preset, args.sample, results_dir=args.results_dir, progress=True))
            print(text)
            return 0 if ok else 1
        if args.command in ("grid", "evaluate", "failures", "seed-models", "tune", "confirm", "best", "all"):
            folder = experiments.preset_dir(args.preset, args.results_dir)
            experiments.check_writable(folder / "runs")
        if args.command in ("figures", "all"):
            from lib import plots

            experiments.check_writable(plots.FIGURES_DIR, "figures")
        if args.command in ("grid", "all"):
            grid = experiments.grid_search(args.preset, force=args.force, results_dir=args.results_dir)
            common = grid["choice"]["common"]
            print(f"grid search ({args.preset}): {len(grid['cells'])} cells, {grid['training_time_s']:.0f} s of training; "
                  f"common choice {common['optimizer']} lr={common['lr']:g} "
                  f"(mean validation accuracy {100 * common['mean_val_acc']:.2f} %)")
        if args.command in ("evaluate", "all"):
            evaluation = experiments.evaluate(args.preset, force=args.force, results_dir=args.results_dir)
            print(f"evaluation ({args.preset}): {evaluation['training_time_s']:.0f} s of training")
        if args.command in ("failures", "all"):
            from lib.failures import failure_study

            study = failure_study(args.preset, force=args.force, results_dir=args.results_dir)
            for case in study["cases"]:
                print(f"failed round: {case['model']} seed {case['seed']} ({case['reason']}): cause {case['cause']}")
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
            for track, recipe in freeze_recipe(args.preset, configs, ablation, results_dir=args.results_dir).items():
                print(f"{track} track: frozen recipe {recipe['recipe_sha256'][:12]}: confirmation block "
                      f"{recipe['block']} (seeds {recipe['seeds'][0]}-{recipe['seeds'][-1]})")
        if args.command == "confirm":
            from lib.best import TRACKS, blocks_used, confirm

            for track in TRACKS:  # each track's frozen recipe on its own block (a confirmed one is re-read)
                study = confirm(args.preset, results_dir=args.results_dir, track=track)
                entry = study["tracks"][track]
                print(f"confirmation block {study['block']} ({track} track): {100 * entry['mean_acc']:.2f} +- "
                      f"{100 * entry['std_acc']:.2f} % over {entry['n_rounds']} rounds")
            print(f"confirmation blocks used: {blocks_used(args.preset, args.results_dir)}")
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
                print()
                print(format_verdicts(experiments.load_evaluation(args.preset, args.results_dir)))
    except (ValueError, experiments.ResultsError, MnistError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        if args.command == "verify":
            print("\ninterrupted: verify stopped; its reruns were in a temporary folder, the results were not touched",
                  file=sys.stderr)
        else:
            print(f"\ninterrupted: {interrupted_message(interrupt, argv)}", file=sys.stderr)
        return 130
    return 0


def when_command(args):
    """size-study, aux-study, error-study: run (or read) the study, draw its figures, print its rows."""
    from lib import experiments, plots, when_study as W

    experiments.check_writable(experiments.preset_dir(args.preset, args.results_dir) / "runs")
    experiments.check_writable(args.figures or plots.FIGURES_DIR, "figures")
    common = dict(preset=args.preset, force=args.force, results_dir=args.results_dir)
    if args.command == "size-study":
        print(W.size_rows(W.size_study(sizes=args.sizes, **common)))
    elif args.command == "aux-study":
        print(W.aux_rows(W.aux_study(**common)))
    else:
        print(W.error_rows(W.error_study(**common)))
    for path in W.draw(args.preset, args.results_dir, args.figures):
        print(f"wrote {path}")
    return 0


def interrupted_message(interrupt, argv):
    """One line after Ctrl-C: what is saved and the command that resumes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    resume = " ".join(["python -m lib"] + [a for a in argv if a != "--force"])
    saved = f"{interrupt}; " if hasattr(interrupt, "saved") else "every finished run is saved; "
    return f"{saved}`{resume}` resumes from them"


if __name__ == "__main__":
    sys.exit(main())
