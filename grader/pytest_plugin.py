"""pytest plugin for learners: `pytest --notebook my_lab.ipynb` (inactive without --notebook)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mbgd-grader", "grade a Mini-Batch Gradient Descent lab notebook")
    group.addoption(
        "--notebook",
        action="append",
        default=[],
        metavar="PATH",
        help="grade this notebook (or every notebook in this folder); repeatable",
    )
