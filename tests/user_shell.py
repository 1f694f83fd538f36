"""A user's shell for end-to-end tests: commands run from the user's own folder, with no
PYTHONPATH, no store or simulator settings of ours, through the installed console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def user_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "GEPA_TRACE_STORE") and not k.startswith("GEPA_SIM_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=folder, env=user_env(), capture_output=True,
                          text=True, check=False, timeout=300)


def cli_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """``gepa-trace ARGS`` from ``folder``, the console script of this environment."""
    return run_in(folder, str(Path(sys.executable).parent / "gepa-trace"), *args)
