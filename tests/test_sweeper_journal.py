"""Optuna's private API behind one module (cifar_exp.sweeps.sweeper._private), checked on the pinned
Optuna; and a study journal torn by a crash mid-write (issue 20, item 6): real journal files."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cifar_exp.sweeps.sweeper import _optuna as oh
from cifar_exp.sweeps.sweeper import _private as private

APPS = Path(__file__).resolve().parent / "optuna_apps"


def _journal_study(path, trials=2):
    import optuna

    study = optuna.create_study(storage=oh.open_storage(str(path)), study_name="s")
    for x in range(trials):
        trial = study.ask()
        trial.suggest_float("x", 0, 10)
        study.tell(trial, float(x))
    return study


def test_each_private_optuna_use_works_on_the_pinned_optuna(tmp_path):
    import optuna

    study = _journal_study(tmp_path / "j", trials=0)
    trial = study.ask()
    trial_id = private.trial_id(trial)
    private.set_user_attr(study, trial_id, "u", 1)
    private.set_system_attr(private.storage_of(study), trial_id, "s", 2)
    # what a job does: attach to the trial by its id, in another study object, and report
    other = optuna.load_study(study_name="s", storage=oh.open_storage(str(tmp_path / "j")))
    attached = private.attach(other, trial_id)
    attached.report(0.5, 1)
    frozen = private.frozen(study, trial_id)
    assert (frozen.number, frozen.user_attrs, frozen.system_attrs["s"]) == (trial.number, {"u": 1}, 2)
    assert frozen.intermediate_values == {1: 0.5}


def test_a_torn_last_record_is_cut_and_kept_aside_and_the_study_goes_on(tmp_path):
    import optuna

    path = tmp_path / "optuna.journal"
    _journal_study(path)
    whole = path.read_bytes()
    torn = b'{"op_code":5,"worker_id":"w","trial_id":2,"param_na'
    path.write_bytes(whole + torn)

    warning = oh.repair_journal(str(path))
    assert f"{path}: its last record was torn" in warning and repr(torn[:60]) in warning
    assert path.read_bytes() == whole and Path(f"{path}.torn").read_bytes() == torn + b"\n"
    study = optuna.load_study(study_name="s", storage=oh.open_storage(str(path)))
    study.optimize(lambda t: t.suggest_float("x", 0, 10), n_trials=1)  # appends after a whole line
    again = optuna.load_study(study_name="s", storage=oh.open_storage(str(path)))
    assert [t.state.name for t in again.trials] == ["COMPLETE"] * 3
    assert oh.repair_journal(str(path)) is None  # a sound journal is left as it is


def test_a_record_appended_onto_a_torn_one_is_salvaged_and_a_last_record_without_newline_kept(tmp_path):
    import optuna

    path = tmp_path / "optuna.journal"
    _journal_study(path)
    lines = path.read_bytes().split(b"\n")[:-1]
    # an older sweeper appended its next record onto a torn line; the last record lost its newline
    lines[-2] = b'{"op_code":6,"worker' + lines[-2]
    path.write_bytes(b"\n".join(lines))
    warning = oh.repair_journal(str(path))
    assert f"line {len(lines) - 1} began with a torn record" in warning and "lacked its newline" in warning
    study = optuna.load_study(study_name="s", storage=oh.open_storage(str(path)))
    assert [t.value for t in study.trials] == [0.0, 1.0]


def test_a_damaged_line_that_holds_no_whole_record_is_refused_in_one_line(tmp_path):
    path = tmp_path / "optuna.journal"
    _journal_study(path)
    lines = path.read_bytes().split(b"\n")
    lines[2] = b"garbage"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(oh.JournalDamaged, match=rf"{path}=.*line 3: b'garbage'.*restore it from a copy"):
        oh.repair_journal(str(path))


@pytest.mark.slow
def test_a_sweep_resumes_on_a_journal_torn_by_a_crash(tmp_path):
    """The journal's last record torn (a process killed mid-write): the rerun keeps the finished
    trials, warns once naming the torn record, and completes the study."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(APPS.parent.parent), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, str(APPS / "sphere.py"), "--multirun", f"hydra.sweep.dir={tmp_path}",
               "hydra/sweeper/sampler=random"]
    first = subprocess.run([*command, "hydra.sweeper.n_trials=2"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    journal = tmp_path / oh.JOURNAL_FILE
    with open(journal, "ab") as f:
        f.write(b'{"op_code":4,"worker_id":"crashed","study_id":0,"datetime_st')
    second = subprocess.run([*command, "hydra.sweeper.n_trials=4"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    output = second.stdout + second.stderr
    assert output.count("its last record was torn") == 1 and "worker_id" in output
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert results.n_trials == {"complete": 4}
