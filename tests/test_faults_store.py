"""A store that fails under a job: a tracking server gone mid-run, a store whose disk fills, a damaged
sqlite file. Real servers, real filesystems, real corrupted pages: training goes on, nothing logged is
lost, a run is FINISHED only with its whole record in the store, and one line says what to do."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import SMOKE, all_runs, compose, run_cli, tracking_uri

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
EPOCHS = 2  # the server goes away after epoch 1: epoch 2 and the close wait
JOB = [*SMOKE, f"trainer.epochs={EPOCHS}", "mlflow.request_timeout_s=2", "mlflow.outage_budget_s=5"]
PER_EPOCH = ("loss", "accuracy", "lr", "epoch_time")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(tmp_path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on sqlite (a copy of a migrated empty store: no schema work)."""
    tracking_uri(tmp_path)  # tmp_path/mlflow.db
    server = subprocess.Popen([MLFLOW, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], cwd=tmp_path, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              # no background job runner (7 huey processes): tracking needs none
                              env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            assert server.poll() is None, "mlflow server exited at start"
            time.sleep(0.5)
    _stop(server)
    raise AssertionError("mlflow server did not answer in 180 s")


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGKILL)  # the server and its uvicorn worker: the outage is abrupt
    server.wait(timeout=30)


def _job(args, cwd) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "cifar_exp", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _pause_after_first_epoch(job: subprocess.Popen) -> list[str]:
    """Read the job's output until epoch 2 begins, then stop the job (SIGSTOP); the lines read."""
    lines = []
    for line in job.stdout:
        lines.append(line)
        if line.startswith("Epoch 2/"):
            job.send_signal(signal.SIGSTOP)
            return lines
    raise AssertionError("the job ended before epoch 2:\n" + "".join(lines[-30:]))


def _resume_to_end(job: subprocess.Popen, lines: list[str]) -> str:
    job.send_signal(signal.SIGCONT)
    lines += job.stdout.readlines()
    job.wait(timeout=600)
    return "".join(lines)


def _assert_complete_record(uri: str) -> None:
    """One run, FINISHED, each epoch's metrics stored exactly once, its artifacts there."""
    client, runs = all_runs(uri)
    assert [run.info.status for run in runs] == ["FINISHED"]
    run_id = runs[0].info.run_id
    for key in PER_EPOCH:
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(1, EPOCHS + 1)), key
    assert {"config.yaml", "learning_curves.png"} <= {a.path for a in client.list_artifacts(run_id)}


@pytest.mark.slow
def test_a_tracking_server_gone_mid_run_costs_no_record(tmp_path):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    folder = tmp_path / "job"
    server = _start_server(tmp_path, port)
    try:
        job = _job([*JOB, f"mlflow.tracking_uri={uri}", f"hydra.run.dir={folder}"], tmp_path)
        lines = _pause_after_first_epoch(job)
    finally:
        _stop(server)
    output = _resume_to_end(job, lines)  # epochs 2.. and the close, with the server gone

    assert job.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    assert f"the tracking store does not answer ({uri})" in output and "training goes on" in output
    warning = next(line for line in output.splitlines() if "the tracking store does not answer" in line)
    assert len(warning) < 400 and "HTTPConnectionPool" not in warning, warning  # the cause, not urllib3's 573 characters
    last = output.strip().splitlines()[-1]
    assert last.startswith("Error: run ") and f"`cifar-exp sync {folder}`" in last
    assert json.loads((folder / "job_status.json").read_text())["status"] == "UNSYNCED"

    server = _start_server(tmp_path, port)  # back, with the same store
    try:
        synced = run_cli(["sync", str(folder)], cwd=tmp_path, timeout=300)
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert "closed FINISHED" in synced.stdout
        assert "View run" not in synced.stdout and "View experiment" not in synced.stdout  # MLflow's, silenced
        _assert_complete_record(uri)
    finally:
        _stop(server)
    assert not (folder / "mlflow_outbox").exists()
    assert json.loads((folder / "job_status.json").read_text())["status"] == "FINISHED"
    from cifar_exp.tracking import outbox

    assert outbox.sync([str(folder)]) == 0  # nothing left: a no-op


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only): a filesystem that really fills."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root (and mount rights in this container)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_store_whose_disk_fills_mid_run_loses_nothing_and_the_same_command_completes_it(tmp_path, small_disk):
    shutil.copyfile(Path(tracking_uri(tmp_path)[len("sqlite:///"):]), small_disk / "mlflow.db")
    uri = f"sqlite:///{small_disk / 'mlflow.db'}"
    args = [*JOB, f"mlflow.tracking_uri={uri}", f"hydra.run.dir={tmp_path / 'job'}"]
    job = _job(args, tmp_path)
    lines = _pause_after_first_epoch(job)
    filler = _fill(small_disk)
    output = _resume_to_end(job, lines)

    assert job.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    full = [line for line in output.splitlines() if "the store's disk is full" in line]
    assert full and f"({small_disk / 'mlflow.db'})" in full[0]
    client, runs = all_runs(uri)
    assert [run.info.status for run in runs] == ["RUNNING"]  # not FINISHED: its record is not complete
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [1]  # kept

    filler.unlink()
    again = run_cli(args, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    _assert_complete_record(uri)


def _store_with_an_earlier_run(tmp_path) -> Path:
    """tmp_path/mlflow.db holding a run with 3000 metric values (many pages of the metrics table)."""
    uri = tracking_uri(tmp_path)
    subprocess.run([sys.executable, "-c", """if True:
        import sys, time
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient
        client = MlflowClient(sys.argv[1])
        run = client.create_run(client.create_experiment("earlier"))
        now = int(time.time() * 1000)
        for start in range(0, 3000, 1000):
            client.log_batch(run.info.run_id, metrics=[Metric("loss", 1.0 / (i + 1), now, i) for i in range(start, start + 1000)])
        client.set_terminated(run.info.run_id)
    """, uri], check=True, capture_output=True, timeout=300)
    return Path(uri[len("sqlite:///"):])


def _corrupt_a_metrics_page(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        root = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'metrics'").fetchone()[0]
    connection.close()
    with open(path, "r+b") as f:  # the metrics table's root page: its b-tree header becomes garbage
        f.seek((root - 1) * page_size)
        f.write(b"\x55" * 64)


@pytest.mark.slow
def test_a_damaged_store_is_refused_before_training_naming_it_and_the_repair(tmp_path):
    path = _store_with_an_earlier_run(tmp_path)
    _corrupt_a_metrics_page(path)
    result = run_cli([*SMOKE, f"mlflow.tracking_uri=sqlite:///{path}"], cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"Error: Invalid config: mlflow.tracking_uri='sqlite:///{path}'")
    assert f"sqlite's quick_check of {path} says:" in line and f"cifar-exp recover {path}" in line
    assert "Epoch 1/" not in result.stdout


@pytest.mark.slow
def test_recover_copies_what_is_readable_beside_the_damaged_store_and_mlflow_reads_it(tmp_path):
    # sqlite3 3.40's `.recover` fails here ("SQL logic error") and `.dump` ends in ROLLBACK: both gave an
    # empty store that the next job silently filled with fresh tables (issue 20). The copy keeps the run.
    path = _store_with_an_earlier_run(tmp_path)
    _corrupt_a_metrics_page(path)
    damaged = path.read_bytes()
    result = run_cli(["recover", str(path)], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "runs: 1 rows kept" in result.stdout and f"{path}.recovered" in result.stdout
    assert path.read_bytes() == damaged  # the damaged file is only read
    again = run_cli(["recover", str(path)], cwd=tmp_path, timeout=120)
    assert again.returncode == 2 and "exists" in again.stderr  # never overwrites an earlier copy
    runs = subprocess.run([sys.executable, "-c", """if True:
        import sys
        from mlflow.tracking import MlflowClient
        client = MlflowClient(sys.argv[1])
        runs = client.search_runs([client.get_experiment_by_name("earlier").experiment_id])
        print(len(runs), runs[0].info.status)
    """, f"sqlite:///{path}.recovered"], capture_output=True, text=True, timeout=300)
    assert runs.stdout.split() == ["1", "FINISHED"], runs.stderr[-2000:]


def test_quick_check_finds_one_damaged_page_and_passes_a_sound_store(tmp_path):
    from cifar_exp.errors import ConfigError
    from cifar_exp.tracking import health

    path = Path(tracking_uri(tmp_path)[len("sqlite:///"):])
    with sqlite3.connect(path) as connection:  # a store's table spanning pages, written by sqlite itself
        connection.execute("CREATE TABLE filler (x TEXT)")
        connection.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,) for _ in range(200)])
    connection.close()
    health.check_sqlite(f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        root = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'filler'").fetchone()[0]
    connection.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\x55" * 64)
    os.utime(path)
    health._quick_check.cache_clear()
    with pytest.raises(ConfigError, match="quick_check"):
        health.check_sqlite(f"sqlite:///{path}")


HOT_JOURNAL_WRITER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("CREATE TABLE kept (x TEXT)")
connection.execute("INSERT INTO kept VALUES ('committed')")
connection.execute("PRAGMA cache_size=1")  # the transaction's pages reach the file before it commits
connection.execute("BEGIN")
connection.executemany("INSERT INTO kept VALUES (?)", [("x" * 500,) for _ in range(5000)])
print("inside", flush=True)
time.sleep(120)
"""


def test_a_store_whose_writer_was_killed_inside_a_transaction_is_rolled_back_not_refused(tmp_path):
    """SIGKILL during an MLflow write leaves a hot journal beside the store; a read-only quick_check
    cannot roll it back ('attempt to write a readonly database') and refused the store as damaged, so a
    killed job could not resume (a CI run met it). The check rolls it back as sqlite does on any
    read-write open: the committed row stays, the killed transaction is gone."""
    from cifar_exp.tracking import health

    path = tmp_path / "mlflow.db"
    writer = subprocess.Popen([sys.executable, "-c", HOT_JOURNAL_WRITER, str(path)], stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout.readline().strip() == "inside"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert (tmp_path / "mlflow.db-journal").exists()  # the hot journal the kill left
    with pytest.raises(sqlite3.OperationalError, match="readonly"):  # what the read-only check met
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            connection.execute("PRAGMA quick_check").fetchall()
    health._quick_check.cache_clear()
    health.check_sqlite(f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT x FROM kept").fetchall() == [("committed",)]
    connection.close()


@pytest.mark.slow
def test_a_home_that_cannot_hold_caches_moves_them_with_one_warning_and_the_job_runs(tmp_path):
    home = tmp_path / "home"
    home.write_text("a file where HOME's folder is expected: even root cannot create ~/.cache in it\n")
    uri = tracking_uri(tmp_path)
    result = run_cli([*SMOKE, "trainer.epochs=1", f"mlflow.tracking_uri={uri}"], cwd=tmp_path, timeout=600,
                     env={"HOME": str(home), "XDG_CACHE_HOME": "", "KERAS_HOME": "", "MPLCONFIGDIR": ""})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    warnings = [line for line in output.splitlines() if "cannot hold caches" in line]
    assert len(warnings) == 1 and f"HOME ({home})" in warnings[0]
    assert "XDG_CACHE_HOME, KERAS_HOME, MPLCONFIGDIR" in warnings[0]
    assert "compile_cache" not in output and "Matplotlib created a temporary" not in output
    assert [run.info.status for run in all_runs(uri)[1]] == ["FINISHED"]


def test_a_replayed_outbox_sends_each_metric_step_once(tmp_path):
    """A write that landed but never answered (a timeout) waits too: replaying it adds nothing twice."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from cifar_exp.tracking import outbox

    client = MlflowClient(tracking_uri(tmp_path))
    run_id = client.create_run(client.create_experiment("replay")).info.run_id
    landed = [Metric("loss", 2.0, 1000, 1), Metric("loss", 1.5, 2000, 2)]
    client.log_batch(run_id, metrics=landed)
    box = outbox.Outbox(str(tmp_path), run_id, client.tracking_uri)
    box.add({"op": "log_batch", "metrics": [[m.key, m.value, m.timestamp, m.step] for m in landed]})
    box.add({"op": "log_batch", "metrics": [["loss", 1.0, 3000, 3]], "params": [["lr", "0.1"]]})
    box.add({"op": "set_terminated", "status": "FINISHED", "end_time": 4000})
    assert outbox.sync([str(tmp_path)]) == 0
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 2.0), (2, 1.5), (3, 1.0)]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert not (tmp_path / outbox.OUTBOX).exists()


@pytest.mark.parametrize("error, kind", [
    (sqlite3.OperationalError("database or disk is full"), "full"),
    (OSError(28, "No space left on device"), "full"),
    (sqlite3.DatabaseError("database disk image is malformed"), "damaged"),
    (ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded"), "unreachable"),
    (sqlite3.OperationalError("database is locked"), None),  # busy, not an outage: retried as before
    (ValueError("Changing param values is not allowed"), None),
])
def test_store_failures_are_told_apart(error, kind):
    from cifar_exp.tracking import health

    assert health.failure_kind(error) == kind


@pytest.mark.parametrize("override", ["mlflow.request_timeout_s=0", "mlflow.outage_budget_s=inf",
                                      "mlflow.outage_budget_s=abc", "mlflow.request_timeout_s=true"])
def test_outage_waits_are_checked_before_anything_runs(override):
    from cifar_exp.errors import ConfigError
    from cifar_exp.validate import validate

    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        validate(compose([*SMOKE, override]))


@pytest.mark.slow
def test_a_store_failure_is_worded_by_its_cause_not_by_sqlalchemy_or_urllib3(tmp_path):
    # issue 20: the warning showed SQLAlchemy's autoflush advice and urllib3's 573-character error.
    path = _store_with_an_earlier_run(tmp_path)
    code = """if True:
        import sys, time
        from pathlib import Path
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient
        from cifar_exp.tracking import health
        sys.path.insert(0, sys.argv[3])
        from test_faults_store import _corrupt_a_metrics_page
        for uri in (sys.argv[1], sys.argv[2]):
            client = MlflowClient(uri)
            run_id = client.create_run(client.get_experiment_by_name("earlier").experiment_id).info.run_id \\
                if uri.startswith("sqlite") else "0" * 32
            if uri.startswith("sqlite"):
                _corrupt_a_metrics_page(Path(uri[len("sqlite:///"):]))
            try:
                client.log_batch(run_id, metrics=[Metric("x", 1.0, int(time.time() * 1000), 0)])
            except Exception as error:
                kind = health.failure_kind(error)
                print(kind, "|", health.cause(error, kind))
    """
    env = dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    result = subprocess.run([sys.executable, "-c", code, f"sqlite:///{path}", f"http://127.0.0.1:{_free_port()}",
                             str(Path(__file__).parent)], capture_output=True, text=True, timeout=300, env=env)
    assert result.stdout.splitlines() == ["damaged | (sqlite3.DatabaseError) database disk image is malformed",
                                          "unreachable | connection refused"], result.stderr[-2000:]


@pytest.mark.slow
def test_an_empty_file_where_the_store_was_is_refused_not_filled_with_fresh_tables(tmp_path):
    # issue 20: a failed `sqlite3 DAMAGED .recover | sqlite3 NEW` leaves a 0-byte file (exit 0); moved in
    # place, the next job created fresh tables in it and FINISHED: every earlier run gone from the store.
    path = tmp_path / "store" / "mlflow.db"
    path.parent.mkdir()
    path.write_bytes(b"")
    result = run_cli([*SMOKE, f"mlflow.tracking_uri=sqlite:///{path}"], cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"Error: Invalid config: mlflow.tracking_uri='sqlite:///{path}'") and "empty" in line
    assert f"cifar-exp recover {path}" in line
    assert path.stat().st_size == 0 and "Epoch 1/" not in result.stdout


def test_recover_reads_past_a_damaged_leaf_page(tmp_path):
    from cifar_exp.tracking import health

    path = tmp_path / "store.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE metrics (key TEXT, value REAL, step INTEGER)")
        connection.executemany("INSERT INTO metrics VALUES (?, ?, ?)", [("loss", 1.0 / (i + 1), i) for i in range(3000)])
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        leaves = [row[0] for row in connection.execute(
            "SELECT pageno FROM dbstat WHERE name = 'metrics' AND pagetype = 'leaf'")]
    connection.close()
    with open(path, "r+b") as f:  # one leaf in the middle: the rows before and after it are readable
        f.seek((leaves[len(leaves) // 2] - 1) * page_size)
        f.write(b"\x55" * 64)
    kept = health.recover_sqlite(str(path), str(path) + ".recovered")
    rows_per_leaf = 3000 // len(leaves) + 1
    assert 3000 - 3 * rows_per_leaf <= kept["metrics"] < 3000
    with sqlite3.connect(str(path) + ".recovered") as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        steps = [row[0] for row in copy.execute("SELECT step FROM metrics ORDER BY rowid")]
    copy.close()
    assert steps[0] == 0 and steps[-1] == 2999 and len(set(steps)) == len(steps)
