"""What a study is: one module that owns its results files, its runs, its summary rows, its figures,
its report sections and its notebook section, described by one `Study` (lib/studies.py lists them).

    Study(name="size", files=(("size", "size-study"),), commands=(Command("size-study", ...),),
          figures=..., sections=(("size", section, ("size_accuracy", "size_effects")),), notebook=...)

Everything is optional but the name: `python -m lib` adds a subcommand per Command (those with
`in_all` run, in the tuple's order, under `python -m lib all`), `summary` joins every study's `rows`,
`figures` draws every study's `figures`, the report adds every study's `sections` (each with the
figures it shows) and the notebook shows every study's `notebook` parts.
"""
from dataclasses import dataclass
from typing import Callable, Optional, Tuple


@dataclass(frozen=True)
class Command:
    """One subcommand of `python -m lib`: run(args) trains or reads, then prints its lines."""

    name: str
    help: str
    run: Callable  # run(args): args.preset, args.results_dir, args.force (when `force`), and `options`
    in_all: bool = False  # part of `python -m lib all`
    force: bool = True  # takes --force
    options: Tuple = ()  # ((flags...), argparse keywords) of its own options
    figures: bool = False  # writes figures (checked for writing before it runs)


@dataclass(frozen=True)
class Study:
    name: str
    files: Tuple = ()  # ((results file stem, command that writes it), ...) under results/<preset>/
    commands: Tuple = ()  # Command, in the order `all` runs them
    rows: Optional[Callable] = None  # rows(preset, results_dir) -> {row name: summary row}
    figures: Optional[Callable] = None  # figures(preset, results_dir) -> [(figure name, draw())]
    sections: Tuple = ()  # ((numbers key, section(src) -> dict or None, (figure names it shows)), ...)
    notebook: Optional[Callable] = None  # notebook(preset, results_dir) -> [Markdown text or figure]
    entries: Optional[Callable] = None  # entries(preset, results_dir) -> {row name: (entry with its config, file)}
    title: str = ""  # the notebook's heading of its part


def markdown_table(header, rows):
    """A Markdown table (text): one header row, then one row per list of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])
