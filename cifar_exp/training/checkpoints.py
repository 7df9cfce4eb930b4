"""Where a job's checkpoint lives and which state in it a re-run resumes.

One folder per config inside the job's output folder (`<output_dir>/checkpoint/<config hash>`),
so a different config run in the same folder never resumes, overwrites or deletes another
config's checkpoint. In it, Keras' BackupAndRestore (double_checkpoint=True) keeps the last
epoch (`latest.weights.h5`, `training_metadata.json`) and the one before (`*.bkp`); self-paced
learning adds `spl_state_epoch_NNNN.npz` (the last two epochs). A kill can leave any of these
files partial: `restore_point` picks the newest state whose every file reads back, and never
deletes one. Imports no Keras (job.py uses the folder helpers before training).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

WEIGHTS, METADATA, BACKUP = "latest.weights.h5", "training_metadata.json", ".bkp"
SPL_STATE = "spl_state_epoch_{:04d}.npz"  # written by spl.SelfPacedLearning.save_state


def folder(output_dir: str | None, digest: str) -> str | None:
    """The checkpoint folder of the config with hash `digest` in a job's output folder."""
    return str(Path(output_dir) / "checkpoint" / digest) if output_dir else None


def worker_folder(output_dir: str | None, digest: str, worker: str) -> str | None:
    """A non-chief worker's own checkpoint folder (`<digest>.<worker>`, e.g. `<digest>.worker1`): the
    workers of one multi-worker job share its output folder (one Slurm job), and two writers of one
    Keras backup corrupt it. Each worker restores its own copy of the same synchronised state."""
    base = folder(output_dir, digest)
    return f"{base}.{worker}" if base else None


def others(output_dir: str | None, digest: str) -> list[str]:
    """Checkpoint folders of other configs in the same output folder (left alone)."""
    root = Path(output_dir or ".") / "checkpoint"
    if not output_dir or not root.is_dir():
        return []
    legacy = [str(root)] if any(root.glob("*.weights.h5")) else []  # written before folders per config
    return legacy + sorted(str(p) for p in root.iterdir()
                           if p.is_dir() and p.name.split(".")[0] != digest and not p.name.endswith(".unreadable"))


def _epoch(metadata: Path) -> int:
    return int(json.loads(metadata.read_text())["epoch"])


def _check_weights(path: Path) -> None:
    """Read every array: a file cut short while being written fails here (OSError, KeyError)."""
    import h5py

    with h5py.File(path, "r") as file:
        file.visititems(lambda name, item: item[()] if isinstance(item, h5py.Dataset) else None)


def _check_spl_state(checkpoint: Path, epoch: int) -> None:
    import numpy as np

    with np.load(checkpoint / SPL_STATE.format(epoch)) as state:
        for key in state.files:
            state[key]


def _state(checkpoint: Path, suffix: str, spl: bool) -> int:
    """Epochs held by the state whose files end in `suffix`; raises if any file is unreadable."""
    epoch = _epoch(checkpoint / (METADATA + suffix))
    _check_weights(checkpoint / (WEIGHTS + suffix))
    if spl:
        _check_spl_state(checkpoint, epoch)
    return epoch


def _backup_epoch(checkpoint: Path) -> int | None:
    try:
        return _epoch(checkpoint / (METADATA + BACKUP))
    except Exception:  # none yet, or cut short while Keras copied it: the latest state is whole
        return None


def restore_point(checkpoint: str | None) -> int:
    """Finished epochs of the last good state in `checkpoint` (0: start from scratch), made the
    state Keras' BackupAndRestore loads.

    The newest state is `latest.*`, unless its metadata still names the backup's epoch: Keras
    then died between writing the weights and the metadata, and only the backup is consistent.
    When `latest.*` is unreadable (a kill during the write, a truncated copy), the backup is
    copied over it and kept. When nothing is readable the folder is renamed `<folder>.unreadable`
    (not deleted) and the job starts from scratch. Each fallback is logged as a warning.
    """
    if not checkpoint or not Path(checkpoint).is_dir():
        return 0
    root = Path(checkpoint)
    if not any(root.glob(WEIGHTS + "*")):
        return 0  # nothing saved yet (a folder holding only epoch records or the SPL state counts as none)
    spl = any(root.glob(SPL_STATE.replace("{:04d}", "*")))
    problem = None
    try:
        epoch = _state(root, "", spl)
        if _backup_epoch(root) != epoch:
            return epoch
        problem = f"{WEIGHTS} was being rewritten when the job stopped"
    except Exception as error:  # OSError, KeyError, ValueError: each kind of partial file
        problem = f"{WEIGHTS} or its state is unreadable ({type(error).__name__}: {error})"
    try:
        epoch = _state(root, BACKUP, spl)
    except Exception as error:
        aside = root.with_name(root.name + ".unreadable")
        shutil.rmtree(aside, ignore_errors=True)
        root.rename(aside)
        log.warning("checkpoint %s: %s, and so is its backup (%s); moved to %s, starting from scratch",
                    root, problem, error, aside)
        return 0
    for name in (WEIGHTS, METADATA):
        partial = root / (name + ".restoring")
        shutil.copyfile(root / (name + BACKUP), partial)
        partial.replace(root / name)  # atomic: a kill now leaves either state whole
    log.warning("checkpoint %s: %s; resuming from the previous epoch's backup (epoch %d)", root, problem, epoch)
    return epoch
