"""The README and docs/ quote the committed results; they must quote them exactly, and their links must lead
somewhere. Each quoted block sits between `<!-- NAME course -->` and `<!-- /NAME -->` markers."""
import re

import pytest

from lib import quotes
from lib.experiments import PROJECT_ROOT, preset_dir, read_json

README = PROJECT_ROOT / "README.md"
STUDIES = PROJECT_ROOT / "docs" / "studies.md"
# every block the pages must quote (more may be added; each is checked below)
REQUIRED = {README: ("summary", "verdicts"), STUDIES: ("wall times", "size", "aux", "errors")}


@pytest.mark.parametrize("page, name", [(page, name) for page, names in REQUIRED.items() for name in names],
                         ids=lambda v: getattr(v, "name", v))
def test_required_blocks_are_quoted(page, name):
    assert (name, "course") in quotes.quoted(page), f"{page.name} lacks the <!-- {name} course --> block"


@pytest.mark.parametrize("page, key", [(page, key) for page in quotes.PAGES for key in quotes.quoted(page)],
                         ids=lambda v: getattr(v, "name", None) or " ".join(v))
def test_quoted_blocks_are_what_the_code_prints(page, key):
    assert quotes.quoted(page)[key] == quotes.render(*key), (
        f"{page.name}'s <!-- {key[0]} {key[1]} --> block differs from the committed results: run `python -m lib quotes`")


def test_quotes_rewrites_a_stale_block(tmp_path):
    page = tmp_path / "page.md"
    current = quotes.render("verdicts")
    page.write_text("text\n<!-- verdicts course -->\n```\nold numbers\n```\n<!-- /verdicts -->\nmore\n")
    assert quotes.update([page]) == [("page.md", "verdicts")]
    assert quotes.quoted(page) == {("verdicts", "course"): current}
    assert page.read_text().startswith("text\n") and page.read_text().endswith("more\n")
    assert quotes.update([page]) == []


def test_readme_names_the_two_commands():
    readme = README.read_text()
    assert "make run" in readme and "make test" in readme
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_goal_sentence_is_the_confirmation_s():
    """Whether each track reached its goal on its confirmation block is read from its confirmation file."""
    from lib.best import GOALS, track_confirmations

    confirmations = track_confirmations("course")
    reached = [t for t, c in confirmations.items() if c["tracks"][t]["mean_acc"] >= GOALS[t]]
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
