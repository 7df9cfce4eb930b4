"""What a run records about the code that ran it (tags), shared by the job runner and by tasks that
open runs of their own (transfer's pretraining)."""
from __future__ import annotations

import subprocess
from pathlib import Path


def git_state() -> dict[str, str]:
    """The commit of the code that ran, and whether it had uncommitted changes."""
    source = Path(__file__).resolve().parents[1]  # the package folder: git finds the checkout from it
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if commit.returncode != 0:
        return {}
    return {"git_commit": commit.stdout.strip(), "git_dirty": str(bool(dirty.stdout.strip())).lower()}
