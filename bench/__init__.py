"""Vessel's benchmark harness (not tests): ``python -m bench`` or ``./scripts/bench``.

Every figure is measured together with its floor in the same run, against a real
``vessel serve`` with real modules and real WebSocket clients in separate processes;
docs/performance.md explains the figures, floors and targets and keeps a dated snapshot.
"""
