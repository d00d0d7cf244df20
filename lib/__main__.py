"""Command line of the study: `python -m lib <command> --preset course`. Each study of lib.studies adds
its commands (grid, evaluate, failures, seed-models, tune, best, confirm, size-study, ...), and:

    python -m lib figures        every study's figures, from the results files
    python -m lib summary        mean +- std test accuracy per model [--json]
    python -m lib all            grid, evaluate, failures, seed-models, best, then figures and summary
    python -m lib verify         rerun a few committed runs, compare with them [--sample N]
    python -m lib data-summary   MNIST pools, target balance, sample pairs
    python -m lib quotes         rewrite the results README.md and docs/ quote, from the results files

Cached runs are reused (measured wall times: docs/studies.md).
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
        lines.append(f"{name:<{width}}{acc:>18}{100 * row['mean_err']:>9.2f}{row['n_rounds']:>8}"
                     f"{row['nb_parameters']:>9}  {row['optimizer']} lr={row['lr']:g}")
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
    from lib import studies

    parser = argparse.ArgumentParser(prog="python -m lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {c.name: c for study in studies.STUDIES for c in study.commands}
    in_all = [c for c in commands.values() if c.in_all]

    def add(name, text, force=False):
        p = sub.add_parser(name, help=text)
        p.add_argument("--preset", default="course", help="quick, course (default) or seed002")
        p.add_argument("--results-dir", default=None, help="results folder (default: the project's results/)")
        if force:
            p.add_argument("--force", action="store_true", help="recompute even when results are cached")
        return p

    for command in commands.values():
        p = add(command.name, command.help, command.force)
        for flags, options in command.options:
            p.add_argument(*flags, **options)
    add("figures", "draw figures/ from the results files")
    add("summary", "print the evaluation's numbers").add_argument(
        "--json", action="store_true", help="print one JSON object (accuracies as fractions)")
    add("all", f"{', '.join(c.name for c in in_all)}, figures and summary (about 90 min from scratch on the course "
               "preset)", force=True)
    p = add("verify", "rerun a few committed runs in a temporary folder and compare (exit 1 when a mean falls "
                      "outside its committed 95 %% interval)")
    p.add_argument("--sample", type=int, default=3, help="how many runs, the cheapest first (default 3; 0: all)")
    sub.add_parser("quotes", help="rewrite the blocks README.md and docs/studies.md quote from the committed "
                                  "results (after a study changed them)")
    p = sub.add_parser("data-summary", help="pool sizes and md5s, target balance, sample-pair figure")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/*.gz")
    p.add_argument("--figures", default="figures", help="where to write sample_pairs.png")
    args = parser.parse_args(argv)

    from lib import experiments, plots
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

    if args.command == "quotes":
        from lib.quotes import update

        try:
            changed = update()
        except (ValueError, experiments.ResultsError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print("\n".join(f"rewrote {page}: {name}" for page, name in changed) or "every quoted block is current")
        return 0

    try:
        experiments.get_preset(args.preset)
        if args.command == "verify":
            from lib.verify import format_report, verify

            text, ok = format_report(verify(args.preset, args.sample, results_dir=args.results_dir, progress=True))
            print(text)
            return 0 if ok else 1
        run = in_all if args.command == "all" else [commands[args.command]] if args.command in commands else []
        if run:
            experiments.check_writable(experiments.preset_dir(args.preset, args.results_dir) / "runs")
        if args.command in ("figures", "all") or any(c.figures for c in run):
            experiments.check_writable(getattr(args, "figures", None) or plots.FIGURES_DIR, "figures")
        for command in run:
            command.run(args)
        if args.command in ("figures", "all"):
            for path in plots.draw_all(args.preset, results_dir=args.results_dir):
                print(f"wrote {path}")
        if args.command in ("summary", "all"):
            rows = experiments.summary(args.preset, results_dir=args.results_dir)
            if getattr(args, "json", False):
                print(json.dumps(rows, indent=1))
            else:
                print(format_summary(rows), format_verdicts(experiments.load_evaluation(args.preset, args.results_dir)),
                      sep="\n\n")
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


def interrupted_message(interrupt, argv):
    """One line after Ctrl-C: what is saved and the command that resumes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    resume = " ".join(["python -m lib"] + [a for a in argv if a != "--force"])
    saved = f"{interrupt}; " if hasattr(interrupt, "saved") else "every finished run is saved; "
    return f"{saved}`{resume}` resumes from them"


if __name__ == "__main__":
    sys.exit(main())
