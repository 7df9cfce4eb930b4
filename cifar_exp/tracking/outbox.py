"""A run's writes that its store could not take (server gone, disk full, damaged file) wait in
the job folder (`mlflow_outbox/<run id>/`) and are sent, in order and each metric step once, when
the store answers again: by the job itself, by the resumed job, or by `cifar-exp sync FOLDER`."""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from cifar_exp.tracking import health
from cifar_exp.tracking.secrets import mask_secrets

log = logging.getLogger(__name__)
OUTBOX = "mlflow_outbox"
# Per process, set from cfg.mlflow by `configure` (cifar_exp/conf/config.yaml holds the values); None: MLflow's
# own retry ladder (minutes of stall for a gone server) and no limit.
_settings = {"request_timeout_s": None, "outage_budget_s": None}


def configure(request_timeout_s: float | None, outage_budget_s: float | None) -> None:
    """Each write waits at most `request_timeout_s` (s) for a server, without MLflow's retries;
    once failed writes have cost `outage_budget_s` (s) in all, a run stops trying until it closes."""
    _settings.update(request_timeout_s=request_timeout_s, outage_budget_s=outage_budget_s)


class StoreUnavailable(RuntimeError):
    """A run whose record could not be completed in its store: what is missing waits in the job
    folder; the message says where, why, and the command that sends it."""


@contextmanager
def _short_requests():
    timeout = _settings["request_timeout_s"]
    if timeout is None:
        yield
        return
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(max(1, round(timeout))))
    # MLflow's own loggers print a traceback for each refused sqlite write: one warning of ours says it.
    mlflow_log = logging.getLogger("mlflow")
    level = mlflow_log.level
    mlflow_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        mlflow_log.setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def what_failed(kind: str, tracking_uri: str) -> str:
    """'the store's disk is full (PATH)' and the like, for a health kind."""
    path = health.sqlite_path(tracking_uri)
    store = path or mask_secrets(tracking_uri)
    return {health.FULL: f"the store's disk is full ({store})",
            health.DAMAGED: f"the store is damaged ({store})",
            health.UNREACHABLE: f"the tracking store does not answer ({store})"}[kind]


def what_to_do(kind: str, tracking_uri: str, job_folder: str) -> str:
    """The repair, then the command that sends what waits in `job_folder`."""
    path = health.sqlite_path(tracking_uri)
    if kind == health.DAMAGED:
        repair = health.repair_hint(path) if path else "repair the server's database"
        return f"{repair}; then `cifar-exp sync {job_folder}` sends what waits there"
    first = "free space on its disk" if kind == health.FULL else "once it answers"
    return (f"{first}, re-run the same command (it resumes the run) or run `cifar-exp sync {job_folder}` "
            f"to send it and close the run")


class Outbox:
    """The writes of one run that wait in `folder` (ops.jsonl, files/ for artifacts)."""

    def __init__(self, job_folder: str, run_id: str, tracking_uri: str):
        self.job_folder, self.run_id, self.tracking_uri = str(job_folder), run_id, tracking_uri
        self.folder = Path(job_folder) / OUTBOX / run_id
        self.journal = self.folder / "ops.jsonl"
        self.last_failure: str | None = None  # health's kind of the failure that stopped `send`

    def ops(self) -> list[dict]:
        if not self.journal.is_file():
            return []
        ops = []
        for line in self.journal.read_text().splitlines():
            try:
                ops.append(json.loads(line))
            except ValueError:  # a torn last line (killed mid-append): that write never returned
                log.warning("%s: skipped a torn line", self.journal)
        return ops

    def add(self, op) -> None:
        """Append `op` (a dict, or a function making it) to the journal, on disk before it returns."""
        op = op() if callable(op) else op
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "store.json").write_text(json.dumps({"tracking_uri": self.tracking_uri, "run_id": self.run_id}))
        with self.journal.open("a") as journal:
            journal.write(json.dumps(op) + "\n")
            journal.flush()
            os.fsync(journal.fileno())

    def keep_file(self, name: str, source: Path | None = None, text: str | None = None, figure=None) -> str:
        """A copy of an artifact in the outbox (the original may change before it is sent); its path."""
        target = self.folder / "files" / str(time.time_ns()) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if text is not None:
            target.write_text(text)
        elif figure is not None:
            figure.savefig(target)
        elif source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
        return str(target)

    def replace(self, ops: list[dict]) -> None:
        if not ops:
            shutil.rmtree(self.folder, ignore_errors=True)
            if self.folder.parent.is_dir() and not any(self.folder.parent.iterdir()):
                self.folder.parent.rmdir()
            return
        partial = self.journal.with_suffix(".tmp")
        partial.write_text("".join(json.dumps(op) + "\n" for op in ops))
        partial.replace(self.journal)

    def send(self, client, closing: bool = True) -> int:
        """Send the waiting writes in order; returns how many wait still (0: all sent). Metric
        values the store holds already (a write that landed but did not answer) are not sent
        again. `closing=False` (a resumed job) drops the waiting close: the job closes the run."""
        ops, held = self.ops(), {}
        while ops:
            op = ops[0]
            if op["op"] != "set_terminated" or closing:
                try:
                    with _short_requests():
                        _replay(client, self.run_id, op, held)
                except Exception as error:
                    self.last_failure = health.failure_kind(error)
                    if self.last_failure is None:
                        raise
                    break
            ops.pop(0)
            self.replace(ops)
        return len(ops)


def _replay(client, run_id: str, op: dict, held: dict[str, set]) -> None:
    """Send one journalled write. `held`: (step, timestamp) of each metric key in the store, read
    once per key and kept up to date, so that a metric value is never stored twice."""
    from mlflow.entities import Metric, Param, RunTag

    kind = op["op"]
    if kind == "log_batch":
        metrics = [Metric(*m) for m in op.get("metrics", [])]
        for key in {m.key for m in metrics} - set(held):
            held[key] = {(m.step, m.timestamp) for m in client.get_metric_history(run_id, key)}
        metrics = [m for m in metrics if (m.step, m.timestamp) not in held[m.key]]
        client.log_batch(run_id, metrics=metrics, params=[Param(*p) for p in op.get("params", [])],
                         tags=[RunTag(*t) for t in op.get("tags", [])])
        for m in metrics:
            held[m.key].add((m.step, m.timestamp))
    elif kind == "log_artifact":
        client.log_artifact(run_id, op["path"], op.get("artifact_path"))
    elif kind == "set_terminated":
        client.set_terminated(run_id, op["status"], end_time=op.get("end_time"))
    elif kind == "delete_tag":
        try:
            client.delete_tag(run_id, op["key"])
        except Exception as error:
            if "no tag" not in str(error).lower():  # deleted already
                raise
    elif kind == "update_run":
        client.update_run(run_id, status=op.get("status"), name=op.get("name"))


class BufferedClient:
    """An MlflowClient for one run whose writes never stop training: a write the store cannot
    take (health.failure_kind) waits in the job folder's outbox, later writes queue behind it,
    and each write first sends what waits. Reads and other calls go straight to the client."""

    def __init__(self, client, run_id: str, job_folder: str):
        self.raw = client.raw if isinstance(client, BufferedClient) else client
        self.outbox = Outbox(job_folder, run_id, self.raw.tracking_uri)
        self.failure: str | None = None  # the kind of the first failure, said once
        self.spent_s = 0.0  # seconds spent on writes that failed
        self.gave_up = False

    def __getattr__(self, name):
        return getattr(self.raw, name)

    def resume_outbox(self) -> None:
        """A resumed run: send what an earlier process of the job left waiting (not its close)."""
        if self.outbox.ops():
            waiting = len(self.outbox.ops())
            left = self.outbox.send(self.raw, closing=False)
            log.info("sent %d of %d writes that waited in %s", waiting - left, waiting, self.outbox.folder)

    def _write(self, op, call, last_try: bool = False) -> bool:
        """True when the store took `call` (and everything waiting before it); else `op` (a dict,
        or a function making it) waits in the outbox."""
        budget = _settings["outage_budget_s"]
        if self.gave_up and not last_try:
            self.outbox.add(op)
            return False
        started = time.monotonic()
        try:
            if self.outbox.ops() and self.outbox.send(self.raw):
                raise _StillDown(self.outbox.last_failure)
            with _short_requests():
                call()
            if self.failure:
                log.warning("the tracking store answers again: what waited in %s is sent", self.outbox.folder)
                self.failure = None
            return True
        except Exception as error:
            kind = error.kind if isinstance(error, _StillDown) else health.failure_kind(error)
            if kind is None:
                raise
            self.spent_s += time.monotonic() - started
            self.outbox.add(op)
            if self.failure is None:
                first = health.cause(error, kind)
                log.warning("%s: %s; training goes on, run %s's writes wait in %s",
                            what_failed(kind, self.raw.tracking_uri), mask_secrets(first), self.outbox.run_id,
                            self.outbox.folder)
            self.failure = kind
            if budget is not None and self.spent_s >= budget and not self.gave_up:
                self.gave_up = True
                log.warning("stopped trying the store after %.0f s of failed writes (mlflow.outage_budget_s=%s); "
                            "the rest of the run waits in %s", self.spent_s, budget, self.outbox.folder)
            return False

    def log_batch(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        op = {"op": "log_batch", "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
              "params": [[p.key, p.value] for p in params], "tags": [[t.key, t.value] for t in tags]}
        self._write(op, lambda: self.raw.log_batch(run_id, metrics=metrics, params=params, tags=tags, **kwargs))

    # An artifact is copied into the outbox only when it has to wait: its op is made then.
    def log_artifact(self, run_id, local_path, artifact_path=None):
        self._write(lambda: {"op": "log_artifact", "artifact_path": artifact_path,
                             "path": self.outbox.keep_file(Path(local_path).name, source=Path(local_path))},
                    lambda: self.raw.log_artifact(run_id, local_path, artifact_path))

    def log_figure(self, run_id, figure, artifact_file, **kwargs):
        folder, name = os.path.split(artifact_file)
        self._write(lambda: {"op": "log_artifact", "artifact_path": folder or None,
                             "path": self.outbox.keep_file(name, figure=figure)},
                    lambda: self.raw.log_figure(run_id, figure, artifact_file, **kwargs))

    def log_text(self, run_id, text, artifact_file):
        folder, name = os.path.split(artifact_file)
        self._write(lambda: {"op": "log_artifact", "artifact_path": folder or None,
                             "path": self.outbox.keep_file(name, text=text)},
                    lambda: self.raw.log_text(run_id, text, artifact_file))

    def delete_tag(self, run_id, key):
        self._write({"op": "delete_tag", "key": key}, lambda: self.raw.delete_tag(run_id, key))

    def update_run(self, run_id, status=None, name=None):
        self._write({"op": "update_run", "status": status, "name": name},
                    lambda: self.raw.update_run(run_id, status=status, name=name))

    def set_terminated(self, run_id, status=None, end_time=None):
        """Close the run once everything before it is in the store. When that fails, the close
        waits too; a FINISHED close raises StoreUnavailable (the run must not look complete), any
        other logs the same message."""
        end_time = end_time or int(time.time() * 1000)
        op = {"op": "set_terminated", "status": status, "end_time": end_time}
        if self._write(op, lambda: self.raw.set_terminated(run_id, status, end_time=end_time), last_try=True):
            return
        message = (f"run {run_id} is not closed {status} in its store: {what_failed(self.failure, self.raw.tracking_uri)}; "
                   f"{len(self.outbox.ops())} writes wait in {self.outbox.folder}; "
                   f"{what_to_do(self.failure, self.raw.tracking_uri, self.outbox.job_folder)}")
        if status == "FINISHED":
            raise StoreUnavailable(message)
        log.error("%s", message)


class _StillDown(Exception):
    def __init__(self, kind: str):
        self.kind = kind


def buffered(client, run_id: str, job_folder: str | None):
    """`client` for run `run_id` with its writes buffered in `job_folder`; unchanged without a folder."""
    return BufferedClient(client, run_id, job_folder) if job_folder else client


def sync(folders: list[str]) -> int:
    """Send every outbox under `folders` (job or sweep folders) to its store and close its run;
    returns the number of runs still waiting (0: all sent)."""
    from mlflow.tracking import MlflowClient

    outboxes = sorted({p.parent for folder in folders for p in Path(folder).glob(f"**/{OUTBOX}/*/store.json")})
    if not outboxes:
        print(f"nothing waits in {', '.join(folders)}")
        return 0
    waiting = 0
    for folder in outboxes:
        meta = json.loads((folder / "store.json").read_text())
        outbox = Outbox(str(folder.parent.parent), meta["run_id"], meta["tracking_uri"])
        ops = outbox.ops()
        closing = [op["status"] for op in ops if op["op"] == "set_terminated"]
        try:
            left = outbox.send(MlflowClient(meta["tracking_uri"]))
        except Exception as error:  # refused for another reason than an outage: said, and the rest goes on
            left = len(outbox.ops())
            first = health.cause(error, health.failure_kind(error))
            print(f"run {meta['run_id']}: the store refused a write: {mask_secrets(first)}")
        if left:
            waiting += 1
            print(f"run {meta['run_id']}: {len(ops) - left} of {len(ops)} writes sent, {left} wait in {folder}")
            continue
        _job_status_done(folder.parent.parent, closing[-1] if closing else None)
        print(f"run {meta['run_id']}: {len(ops)} writes sent" + (f"; closed {closing[-1]}" if closing else ""))
    return waiting


def _job_status_done(job_folder: Path, status: str | None) -> None:
    # job_status.json (what a sweep summary counts) said UNSYNCED: now the run's real status.
    path = job_folder / "job_status.json"
    if status and path.is_file():
        record = json.loads(path.read_text())
        if record.get("status") == "UNSYNCED":
            record.update(status=status, error=None)
            path.write_text(json.dumps(record, indent=1))


def main(argv: list[str]) -> int:
    """`cifar-exp sync FOLDER...`: exit 0 when nothing waits any more, 1 otherwise."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: cifar-exp sync FOLDER...\n\nSend the MLflow writes that wait in the job (or sweep) "
              f"folders' {OUTBOX}/ (the store was unreachable, full or damaged) and close their runs.")
        return 0 if argv else 2
    missing = [folder for folder in argv if not Path(folder).is_dir()]
    if missing:
        print(f"Error: not a folder: {', '.join(missing)}")
        return 2
    # MLflow prints '🏃 View run ... / 🧪 View experiment ...' at each close on a server: sync says its own line.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return 1 if sync(argv) else 0
