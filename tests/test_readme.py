"""README.md gives exactly two commands; CI runs the second one verbatim."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_readme_has_two_commands_and_ci_runs_the_test_one():
    demo, tests = _readme_commands()
    assert demo.endswith("fastmlp demo")
    assert "pytest" in tests
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci_lines = f.read().splitlines()
    assert tests in ci_lines
