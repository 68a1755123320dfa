"""Adversarial suite: a session-wide figures collector and the summary table."""

from __future__ import annotations

import pytest

from ._figures import FIGURES, Figures


@pytest.fixture(scope="session")
def figures() -> Figures:
    """The session's collector; each scenario adds one row."""
    return FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES.rows:
        return
    terminalreporter.section("adversarial figures")
    for line in FIGURES.render():
        terminalreporter.write_line(line)
