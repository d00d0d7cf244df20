"""The README quotes the committed results; it must quote them exactly."""
import re

from lib.__main__ import format_summary
from lib.experiments import PROJECT_ROOT, summary


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
