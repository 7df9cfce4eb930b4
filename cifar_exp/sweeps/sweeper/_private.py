"""Every use of Optuna's private API (underscore names, or classes Optuna documents as not for
users) in one place: an Optuna release that changes one breaks here, and
tests/test_sweeper_private.py checks each on the pinned range.

The sweeper needs them for what Optuna's ask-and-tell interface has no public call for: attributes
of a trial that is asked but not yet told (worker, heartbeat, why it failed), the state a job
reported to a running trial, and a job's handle on the trial its sweeper asked.
"""
from __future__ import annotations

from typing import Any


def trial_id(trial) -> int:
    """The storage's id of an asked trial (unique in the storage; `trial.number` is per study)."""
    return trial._trial_id


def frozen(study, trial_id: int):
    """The trial as the storage holds it now (user attrs and reports a job wrote while it ran)."""
    return study._storage.get_trial(trial_id)


def set_user_attr(study, trial_id: int, key: str, value: Any) -> None:
    """A user attr on an unfinished trial by its id (the sweeper holds no Trial for orphans)."""
    study._storage.set_trial_user_attr(trial_id, key, value)


def set_system_attr(storage, trial_id: int, key: str, value: Any) -> None:
    """A system attr on an unfinished trial, through a storage (the heartbeat thread holds one)."""
    storage.set_trial_system_attr(trial_id, key, value)


def storage_of(study):
    return study._storage


def attach(study, trial_id: int):
    """A Trial for a trial another process asked: a job reports epochs and asks should_prune()."""
    import optuna

    return optuna.trial.Trial(study, trial_id)
