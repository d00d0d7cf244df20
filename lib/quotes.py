"""The blocks that README.md and docs/ quote from the committed results, each between
`<!-- NAME course -->` and `<!-- /NAME -->` markers around a code block. They are never typed by
hand: `python -m lib quotes` rewrites them from the results files, and tests/test_readme.py fails
when one differs from what this module renders.
"""
import re

from lib.experiments import PROJECT_ROOT, atomic_path, load_evaluation, preset_dir, read_json, summary

PAGES = (PROJECT_ROOT / "README.md", PROJECT_ROOT / "docs" / "studies.md")
BLOCK = re.compile(r"(?P<head><!-- (?P<name>[\w ]+) (?P<preset>\w+) -->\s*```\n)(?P<text>.*?)(?P<tail>\n```\s*"
                   r"<!-- /(?P=name) -->)", re.S)


def format_wall_times(preset):
    """One line per results file of every study that records a wall time: that of the command that last
    wrote it, and the training time summed over its runs where the file records one (minutes)."""
    from lib.studies import results_files

    rows = []
    for stem, command in results_files():
        path = preset_dir(preset) / f"{stem}.json"
        data = read_json(path) if path.exists() else {}
        if "wall_time_s" in data:
            rows.append((command, stem + ".json", data["wall_time_s"], data.get("training_time_s")))
    width = max([19] + [len(name) + 2 for _, name, _, _ in rows])
    lines = [f"{'command':<13}{'file':<{width}}{'wall, last run':>16}{'training, its runs':>20}"]
    for command, name, wall, training in rows:
        lines.append(f"{command:<13}{name:<{width}}{wall / 60:>12.1f} min"
                     + (f"{training / 60:>16.1f} min" if training is not None else f"{'-':>20}"))
    return "\n".join(lines)


def render(name, preset="course"):
    """The text of block `name`, from the committed results of `preset`."""
    from lib import when_study as W
    from lib.__main__ import format_summary, format_verdicts

    renderers = {
        "summary": lambda: format_summary(summary(preset)),
        "verdicts": lambda: format_verdicts(load_evaluation(preset)),
        "wall times": lambda: format_wall_times(preset),
        "size": lambda: W.size_rows(W.load_size(preset)),
        "aux": lambda: W.aux_rows(W.load_aux(preset)),
        "errors": lambda: W.error_rows(W.load_errors(preset)),
    }
    if name not in renderers:
        raise ValueError(f"no quoted block is called {name!r}; known: {', '.join(renderers)}")
    return renderers[name]()


def quoted(path):
    """{(name, preset): text} of every quoted block of one page."""
    return {(m["name"], m["preset"]): m["text"] for m in BLOCK.finditer(path.read_text())}


def update(pages=PAGES):
    """Rewrite every quoted block of `pages` from the results; returns the (page, name) pairs that changed."""
    changed = []
    for page in pages:
        text = page.read_text()

        def fresh(m):
            new = render(m["name"], m["preset"])
            if new != m["text"]:
                changed.append((page.name, m["name"]))
            return m["head"] + new + m["tail"]

        new_text = BLOCK.sub(fresh, text)
        if new_text != text:
            with atomic_path(page) as tmp:
                tmp.write_text(new_text)
    return changed
