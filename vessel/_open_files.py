"""The process's limit of open files: a daemon's sockets, module pipes and database are
all files, and systemd's default soft limit (1,024) was what ~1,000 idle connections
exhausted (issue 23). ``vessel serve`` raises the soft limit to the hard one at start,
before the fork server, so module processes inherit it too."""

from __future__ import annotations

import resource

#: What the soft limit is raised to when the hard limit is unlimited.
UNLIMITED_TARGET = 1 << 20


def open_file_limit() -> int:
    """The soft limit of open files this process has now."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one; returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if target <= soft:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # refused (a container's seccomp, say): keep what we have
        return soft, soft
    return soft, target


__all__ = ["open_file_limit", "raise_open_file_limit"]
