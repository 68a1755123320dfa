"""A module the fork server tests preload: it records which process imported it, so a
child can tell that it got the module from the server rather than importing it itself."""

from __future__ import annotations

import os

IMPORTED_IN = os.getpid()
