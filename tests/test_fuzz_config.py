"""Property: any value for any config field, given on the command line, either runs or
exits non-zero with a clear message before training; never a traceback from deep inside
Keras, never a run left RUNNING."""
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import SMOKE, all_runs, compose, run_cli

pytestmark = pytest.mark.slow

FIXED = [*SMOKE, "trainer.epochs=1", "trainer.checkpoint=false"]


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _fields():
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(compose(FIXED), resolve=True)
    return sorted(k for k in _leaves(tree) if not k.startswith(("mlflow.tracking_uri", "hydra")))


VALUES = st.one_of(
    st.integers(-3, 4).map(str),
    st.floats(-2.5, 2.5, allow_nan=False).map(lambda f: f"{f:.3g}"),
    st.sampled_from(["nan", "inf", "-inf", "true", "false", "null", "''", "abc", "[1,2]", "[]", "1e9", "-0"]),
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for every example, created once: a new sqlite store costs a few seconds of
    schema migrations (benchmarks/README.md, figure 1), which 25 examples would pay each. Sharing it
    keeps the check: no example may leave a RUNNING run in it."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('fuzz_store')}/mlflow.db"
    MlflowClient(uri).search_experiments(max_results=1)  # creates the tables
    return uri


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(field=st.sampled_from(_fields()), value=VALUES)
def test_any_value_runs_or_fails_cleanly(tmp_path_factory, store, field, value):
    folder = tmp_path_factory.mktemp("fuzz")
    uri = f"sqlite:///{folder}/mlflow.db" if field.startswith("mlflow.") else store  # mlflow.*: its own store
    result = run_cli([*FIXED, f"{field}={value}", f"mlflow.tracking_uri={uri}"], cwd=folder, timeout=300)
    if result.returncode != 0:
        assert "Traceback" not in result.stderr, f"{field}={value}\n{result.stderr[-3000:]}"
        assert "Error" in result.stderr or "error" in result.stderr, f"{field}={value}: silent failure"
        assert "Epoch 1/1" not in result.stdout, f"{field}={value} failed after training started"
    if uri != store and not (folder / "mlflow.db").exists():
        return
    _, runs = all_runs(uri)
    assert not [r for r in runs if r.info.status == "RUNNING"], f"{field}={value} left a RUNNING run"
