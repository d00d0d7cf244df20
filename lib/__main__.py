"""Command line: `python -m lib COMMAND [options]` (see `python -m lib --help`)."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data-summary", help="pool sizes and md5s, target balance, sample-pair figure")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/*.gz")
    p.add_argument("--figures", default="figures", help="where to write sample_pairs.png")
    args = parser.parse_args(argv)

    if args.command == "data-summary":
        from lib.data import print_data_summary
        print_data_summary(data_dir=args.data_dir, figures_dir=args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
