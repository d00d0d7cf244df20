"""The README and docs/ quote the committed results; they must quote them exactly, and their links must lead
somewhere. Each quoted block sits between `<!-- NAME course -->` and `<!-- /NAME -->` markers."""
import re

import pytest

from lib.__main__ import format_summary, format_verdicts
from lib.experiments import PROJECT_ROOT, load_evaluation, preset_dir, read_json, summary

README = PROJECT_ROOT / "README.md"
STUDIES = PROJECT_ROOT / "docs" / "studies.md"

# (results file, the command that writes it): the files whose wall times docs/studies.md quotes
WALL_TIME_FILES = (("grid", "grid"), ("evaluation", "evaluate"), ("failures", "failures"),
                   ("seed_models", "seed-models"), ("best", "best"), ("confirmation", "confirm"),
                   ("size", "size-study"), ("aux_weight", "aux-study"), ("errors", "error-study"))


def quoted(path, name):
    """The text of the code block between `<!-- name course -->` and `<!-- /name -->` in `path`."""
    match = re.search(rf"<!-- {name} course -->\s*```\n(.*?)\n```\s*<!-- /{name} -->", path.read_text(), re.S)
    assert match, f"{path.name} lacks the <!-- {name} course --> block"
    return match.group(1)


def format_wall_times(preset):
    """One line per results file: the wall time of the command that last wrote it, and the training time
    summed over its runs where the file records one (minutes)."""
    lines = [f"{'command':<13}{'file':<19}{'wall, last run':>16}{'training, its runs':>20}"]
    for name, command in WALL_TIME_FILES:
        data = read_json(preset_dir(preset) / f"{name}.json")
        training = data.get("training_time_s")
        lines.append(f"{command:<13}{name + '.json':<19}{data['wall_time_s'] / 60:>12.1f} min"
                     + (f"{training / 60:>16.1f} min" if training is not None else f"{'-':>20}"))
    return "\n".join(lines)


def when_blocks(preset):
    """{block name: text}: what size-study, aux-study and error-study print, from the committed files."""
    from lib import when_study as W

    return {"size": W.size_rows(W.load_size(preset)), "aux": W.aux_rows(W.load_aux(preset)),
            "errors": W.error_rows(W.load_errors(preset))}


def test_readme_summary_block_is_the_committed_summary():
    assert quoted(README, "summary") == format_summary(summary("course")), (
        "README.md's results table differs from `python -m lib summary --preset course`: paste that output")


def test_readme_verdicts_are_the_computed_ones():
    assert quoted(README, "verdicts") == format_verdicts(load_evaluation("course")), (
        "README.md's verdicts differ from `python -m lib summary --preset course`: paste that output")


def test_readme_names_the_two_commands():
    readme = README.read_text()
    assert "make run" in readme and "make test" in readme
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_goal_sentence_is_the_confirmation_s():
    """Whether each track reached its goal on the confirmation block is read from confirmation.json."""
    from lib.best import GOALS, load_confirmation

    tracks = load_confirmation("course")["tracks"]
    reached = [t for t, e in tracks.items() if e["mean_acc"] >= GOALS[t]]
    readme = README.read_text()
    if not reached:
        assert "Neither track reached the goal set for it on the confirmation block" in readme
    else:
        assert "Neither track reached" not in readme, f"README.md: the {' and '.join(reached)} track reached its goal"


def test_readme_protocol_numbers_are_the_files():
    """Every count of pairs or rounds and the test level the README's prose names are those of the committed
    evaluation and confirmation (the quoted blocks are checked above)."""
    from lib.stats import ALPHA

    preset = read_json(preset_dir("course") / "evaluation.json")["preset"]
    block = read_json(preset_dir("course") / "confirmation.json")["seeds"]
    prose = re.sub(r"<!-- (\w+) course -->.*?<!-- /\1 -->", "", " ".join(README.read_text().split()))
    expected = ((r"(\d+) training pairs", {preset["nb_train"]}), (r"(\d+) test pairs", {preset["nb_test"]}),
                (r"(\d+) (?:fresh |paired )?rounds", {preset["eval_rounds"], len(block)}),
                (r"reject at ([\d.]+)", {ALPHA}))
    for pattern, allowed in expected:
        found = [float(x) for x in re.findall(pattern, prose)]
        assert found and set(found) <= allowed, f"README.md: '{pattern}' gives {found}, the results files {allowed}"


@pytest.mark.parametrize("name", ["size", "aux", "errors"])
def test_studies_page_quotes_the_when_studies(name):
    assert quoted(STUDIES, name) == when_blocks("course")[name], (
        f"docs/studies.md's {name} block differs from what `python -m lib` prints from the committed file")


def test_studies_page_wall_times_are_the_files():
    assert quoted(STUDIES, "wall times") == format_wall_times("course"), (
        "docs/studies.md's wall times differ from the committed results files")


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_of_readme_and_docs_lead_somewhere():
    pages = [README] + sorted((PROJECT_ROOT / "docs").glob("*.md"))
    assert len(pages) > 1, "docs/ holds no page"
    linked = set()
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            assert path.exists(), f"{page.name} links to {target}, which does not exist"
            linked.add(path)
            if anchor:
                headings = re.findall(r"^#+ (.*)$", path.read_text(), re.M)
                assert anchor in {slug(h) for h in headings}, f"{page.name} links to {target}: no such heading"
    unlinked = [p.name for p in pages[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs pages no page links to: {unlinked}"
