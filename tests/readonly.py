"""Make a SQLite store read-only for this process, even as root (shared by tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def set_read_only(path: Path, read_only: bool) -> None:
    """Read-only for this process even as root (root ignores mode bits: chattr +i)."""
    # not -shm: SQLite maps it into memory, and a mapped file it cannot write is a SIGBUS
    files = [p for p in (path, Path(f"{path}-wal")) if p.exists()]
    if os.geteuid() != 0:
        for f in files:
            f.chmod(0o444 if read_only else 0o644)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make the store read-only")
    for f in files:
        done = subprocess.run(["chattr", "+i" if read_only else "-i", str(f)],
                              capture_output=True, check=False)
        if done.returncode and read_only:
            pytest.skip(f"chattr refused here: {done.stderr.decode().strip()}")
