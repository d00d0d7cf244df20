"""The README quotes the committed results; it must quote them exactly."""
import re

from lib.__main__ import format_summary, format_verdicts
from lib.experiments import PROJECT_ROOT, load_evaluation, summary


def test_readme_summary_block_is_the_committed_summary():
    readme = (PROJECT_ROOT / "README.md").read_text()
    match = re.search(r"<!-- summary course -->\s*```\n(.*?)\n```\s*<!-- /summary -->", readme, re.S)
    assert match, "README.md lacks the <!-- summary course --> block"
    assert match.group(1) == format_summary(summary("course")), (
        "README.md's results table differs from `python -m lib summary --preset course`: paste that output")


def test_readme_names_the_two_commands():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_verdicts_are_the_computed_ones():
    readme = (PROJECT_ROOT / "README.md").read_text()
    match = re.search(r"<!-- verdicts course -->\s*```\n(.*?)\n```\s*<!-- /verdicts -->", readme, re.S)
    assert match, "README.md lacks the <!-- verdicts course --> block"
    assert match.group(1) == format_verdicts(load_evaluation("course")), (
        "README.md's verdicts differ from `python -m lib summary --preset course`: paste that output")


def test_readme_goal_sentence_is_the_confirmation_s():
    """Whether each track reached its goal on its confirmation block is read from its confirmation file."""
    from lib.best import GOALS, track_confirmations

    confirmations = track_confirmations("course")
    reached = [t for t, c in confirmations.items() if c["tracks"][t]["mean_acc"] >= GOALS[t]]
    readme = (PROJECT_ROOT / "README.md").read_text()
    if not reached:
        assert "Neither track reached the goal set for it on the confirmation block" in readme
    else:
        assert "Neither track reached" not in readme, f"README.md: the {' and '.join(reached)} track reached its goal"
