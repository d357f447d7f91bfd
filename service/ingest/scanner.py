"""The watched directory: ``<session_dir>/<owner>/**/*.jsonl``, owner = user id or email local part."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".jsonl", ".jsonl.gz")

logger = logging.getLogger(__name__)
_WARNED_LINKS: set[str] = set()  # symlinked owner folders already reported (scans repeat every tick)
_WARNED_NAMES: set[str] = set()  # paths that are not UTF-8, already reported


@dataclass(frozen=True)
class Found:
    owner: str
    path: str
    size: int
    mtime_ns: int


def scan(root: str) -> list[Found]:
    """Every transcript under root, with its stat; blocking, so callers run it in a thread."""
    found: list[Found] = []
    # Files are registered by their real path: the parser refuses a watched file whose path goes
    # through a symlink, and the root itself may be one (a mounted volume).
    base = Path(os.path.realpath(root))
    if not base.is_dir():
        return found
    for owner_dir in sorted(base.iterdir()):
        if owner_dir.is_symlink():
            # It could point anywhere on the host: not followed, like symlinked subdirectories and
            # files below; said once, so a setup that links each analyst's folder in sees why.
            if str(owner_dir) not in _WARNED_LINKS:
                _WARNED_LINKS.add(str(owner_dir))
                logger.warning("not scanning %s: a symbolic link (the watched directory is never "
                               "read through one)", owner_dir)
            continue
        if not owner_dir.is_dir() or owner_dir.name.startswith("."):
            continue
        # fwalk descends through directory descriptors opened without following symlinks, so a
        # folder swapped for a symlink mid-walk is not listed as if its target's files were here.
        for dirpath, dirnames, filenames, dirfd in os.fwalk(owner_dir, follow_symlinks=False):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.endswith(SUFFIXES) or name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)
                if not _is_utf8(path):
                    # SQLite stores text: a name that is not UTF-8 cannot be registered.
                    if path not in _WARNED_NAMES:
                        _WARNED_NAMES.add(path)
                        logger.warning("not scanning %r: its name is not UTF-8", path)
                    continue
                try:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):  # not a symlink, FIFO, socket or device
                    found.append(Found(owner_dir.name, os.path.abspath(path), st.st_size, st.st_mtime_ns))
    return found


def _is_utf8(path: str) -> bool:
    """False for a name with bytes that are not UTF-8 (os functions keep them as surrogate escapes)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
