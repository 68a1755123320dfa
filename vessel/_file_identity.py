"""Telling that a file was not written to since it was checked, without reading it.

Hashing a module's files at every start costs tens of milliseconds (a componentize-py
component is ~19 MB, its precompiled artifact ~36 MB). Once a hash has matched, what the
file system says about the file is kept beside it; a later start that finds the same
identity trusts the bytes it checked before. Any write, truncation or replacement
changes the file's change time (which no system call sets at will), and usually its
size, modification time or inode too, and then the file is hashed again.

Whoever can rewrite the record can also rewrite the hash it stands beside: like the
hash, this guards against the file being changed, not against someone who can write the
whole data dir.
"""

from __future__ import annotations

import os
import time

import msgspec

#: A file is remembered only once it has been left alone this long (nanoseconds): a
#: write in the same tick of the file system's clock as the check could otherwise leave
#: its times unchanged.
SETTLED_NS = 2_000_000_000


class FileIdentity(msgspec.Struct, forbid_unknown_fields=True):
    """What the file system says about a file, enough to tell it was not written to."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def settled(self, settled_ns: int = SETTLED_NS) -> bool:
        """Left alone long enough to be remembered."""
        return time.time_ns() - max(self.mtime_ns, self.ctime_ns) >= settled_ns
