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


#: Where an installed wheel carries ``wit/``, ``web/`` and ``modules/``: setup.py copies
#: them from the top of the repository into the package when it builds the wheel.
PACKAGED_DATA = Path(__file__).resolve().parent / "_data"


def _shipped(name: str) -> Path:
    """The folder ``name`` of the repository's top as this Vessel has it: inside the
    installed package (a wheel), else in the checkout (an editable install, a clone).

    A plain path, not ``importlib.resources``: componentize-py and the gateway need
    real files, and a wheel is always installed unpacked."""
    packaged = PACKAGED_DATA / name
    return packaged if packaged.is_dir() else repo_root() / name


def wit_dir() -> Path:
    """The folder holding ``vessel-host.wit``, the ABI contract guests are built against."""
    return _shipped("wit")


def web_dir() -> Path:
    """The dashboard's files (``web/``)."""
    return _shipped("web")


def bundled_modules_dir() -> Path:
    """The bundled modules' sources (``modules/``: one folder each, and the guest SDK)."""
    return _shipped("modules")


def sdk_dir() -> Path:
    """The guest SDK (``modules/sdk``, the package ``vessel_sdk``) every build imports."""
    return bundled_modules_dir() / "sdk"


def cache_dir() -> Path:
    """Where Vessel keeps what it can always make again (bundled modules built from
    source): systemd's ``$CACHE_DIRECTORY`` (the unit's ``CacheDirectory=``), else
    ``$XDG_CACHE_HOME/vessel``, else ``~/.cache/vessel``."""
    systemd = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "vessel"
    return Path.home() / ".cache" / "vessel"


def modules_dir(data_dir: Path) -> Path:
    """Installed modules live in ``<data-dir>/modules/<id>/``."""
    return data_dir / "modules"


def database_path(data_dir: Path) -> Path:
    """The daemon's one SQLite database."""
    return data_dir / "vessel.db"
