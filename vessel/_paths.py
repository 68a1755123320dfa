"""Where Vessel keeps things on disk.

One data directory holds everything the daemon owns: the SQLite database and the installed
modules. Every other path is derived from it here, so the layout is written down once.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_data_dir() -> Path:
    """The data directory used when none is given.

    ``$VESSEL_DATA_DIR`` wins (a systemd unit or a test sets it); otherwise the XDG data
    directory, ``$XDG_DATA_HOME/vessel``, falling back to ``~/.local/share/vessel`` as the
    XDG spec says when the variable is unset or empty.
    """
    explicit = os.environ.get("VESSEL_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    # The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "vessel"
    return Path.home() / ".local" / "share" / "vessel"


def repo_root() -> Path:
    """The folder that contains the ``vessel`` package (the checkout in development)."""
    return Path(__file__).resolve().parent.parent


def wit_dir() -> Path:
    """The folder holding ``vessel-host.wit``, the ABI contract guests are built against."""
    return repo_root() / "wit"


def modules_dir(data_dir: Path) -> Path:
    """Installed modules live in ``<data-dir>/modules/<id>/``."""
    return data_dir / "modules"


def database_path(data_dir: Path) -> Path:
    """The daemon's one SQLite database."""
    return data_dir / "vessel.db"
