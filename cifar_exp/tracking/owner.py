"""Who owns a run: this process as tags (host, pid, process start), and whether the process a
record names still runs. Read by runs.py (a run it opens or resumes is owned by this process)
and lifecycle.py (a run whose owner is gone is reaped)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

OWNER_HOST, OWNER_PID, OWNER_START = "owner.host", "owner.pid", "owner.start"
ENDED_BY = "ended_by"  # tag: how a run closed by someone other than its own job ended


def _process_start(pid: int) -> str | None:
    """'<boot id>:<start time in clock ticks since boot>' of a live process, None when it is gone
    (or on a system without /proc: then only the pid is compared)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}:{stat.rpartition(')')[2].split()[19]}"  # field 22 of proc(5), counted after the name


def owner() -> dict[str, str]:
    """This process as a run's owner: {owner.host, owner.pid, owner.start} (tag names and values)."""
    return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid()),
            OWNER_START: _process_start(os.getpid()) or ""}


def owner_alive(record: dict) -> bool | None:
    """Whether the process a record (run tags, job_status.json's `owner`) names still runs:
    True/False on its own host; None when it cannot be told here (another host, no owner)."""
    host, pid = record.get(OWNER_HOST), record.get(OWNER_PID)
    if not host or not pid or host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    started = _process_start(int(pid))
    return started is None or not record.get(OWNER_START) or started == record[OWNER_START]
