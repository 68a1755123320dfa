"""Adversarial suite: a session-wide figures collector (tests/conftest.py prints the table,
and gathers it from every pytest-xdist worker)."""

from __future__ import annotations

import pytest

from ._figures import FIGURES, Figures


@pytest.fixture(scope="session")
def figures() -> Figures:
    """The session's collector; each scenario adds one row."""
    return FIGURES
