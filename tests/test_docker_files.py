"""What can be checked of the Docker set-up without a Docker engine: the Dockerfile's base tag is the
pinned TensorFlow, it installs as the README does and runs as a non-root user with the CLI as
entrypoint; the compose file parses, names the services the README describes, keeps secrets out,
and its MLflow image installs the PostgreSQL driver SQLAlchemy opens postgresql:// with."""
import json
import re
import shlex
from importlib import metadata

import pytest
import yaml

from conftest import ROOT


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(parts[0].upper(), parts[1].strip() if len(parts) > 1 else "")
            for parts in (entry.strip().split(None, 1) for entry in logical)]


def readme_section(title_word: str) -> str:
    """The section of the README, else of a page in docs/, whose `## ` heading contains title_word
    (case-insensitive)."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        sections = re.split(r"^## ", page.read_text(), flags=re.M)
        found = [s for s in sections[1:] if title_word.lower() in s.splitlines()[0].lower()]
        if found:
            return found[0]
    raise AssertionError(f"neither README.md nor docs/ has a '## ...{title_word}...' section")


def readme_install_command() -> str:
    """The pip command of the README's set-up block (its first fenced block), up to any `&&`."""
    block = re.search(r"```\w*\n(.*?)```", readme_section("set-up"), flags=re.S).group(1)
    line = next(line for line in block.splitlines() if "pip install" in line)
    return line.split("&&")[0].strip()


def pinned_tensorflow() -> str:
    """The version in pyproject.toml's `"tensorflow==X"` dependency (regex: tomllib needs Python 3.11)."""
    pins = re.findall(r'"tensorflow\s*==\s*([^"\s;]+)"', (ROOT / "pyproject.toml").read_text())
    assert len(pins) == 1, pins
    return pins[0]


def postgres_extra() -> list[str]:
    """The requirements of pyproject.toml's `postgres` extra (regex: tomllib needs Python 3.11)."""
    found = re.search(r"^postgres\s*=\s*\[(.*?)\]", (ROOT / "pyproject.toml").read_text(), flags=re.M | re.S)
    assert found, "pyproject.toml has no `postgres` extra"
    return re.findall(r'"([^"]+)"', found.group(1))


def pip_installs(dockerfile: str) -> dict[str, str]:
    """{canonical project name: requirement} of every `pip install` in a Dockerfile's RUN lines,
    compose's ${VAR:-default} read as its default."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    installed = {}
    for name, args in dockerfile_instructions(dockerfile):
        words = shlex.split(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", args)) if name == "RUN" else []
        if words[:2] == ["pip", "install"]:
            for word in words[2:]:
                if not word.startswith("-"):
                    requirement = Requirement(word)
                    installed[canonicalize_name(requirement.name)] = requirement
    return installed


@pytest.fixture(scope="module")
def instructions():
    return dockerfile_instructions((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_base_image_is_tensorflows_gpu_image_of_the_pinned_version(instructions):
    bases = [args for name, args in instructions if name == "FROM"]
    assert bases == [f"tensorflow/tensorflow:{pinned_tensorflow()}-gpu"]


def test_the_package_is_installed_with_the_readmes_command(instructions):
    runs = [args for name, args in instructions if name == "RUN" and "pip install" in args]
    assert len(runs) == 1
    assert " ".join(runs[0].split()) == " ".join(readme_install_command().split())
    copied = " ".join(args for name, args in instructions if name == "COPY")
    for needed in ("pyproject.toml", "README.md", "cifar_exp", "hydra_plugins"):
        assert needed in copied, needed


def test_it_runs_as_a_non_root_user_with_the_cli_as_entrypoint(instructions):
    users = [args for name, args in instructions if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(name == "RUN" and "useradd" in args and users[-1] in args for name, args in instructions)
    entrypoints = [args for name, args in instructions if name == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoints] == [["python", "-m", "cifar_exp"]]
    assert ("WORKDIR", "/runs") in instructions  # mlflow.db and outputs/ land on the mounted volume


def test_the_build_context_leaves_out_local_state():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "mlflow.db", "mlruns", "outputs", "multirun", "data", ".env"} <= ignored


def test_compose_names_the_services_the_readme_describes(compose):
    assert set(compose["services"]) == {"postgres", "mlflow", "train"}
    section = readme_section("compose")
    for service in compose["services"]:
        assert f"`{service}`" in section, service


def test_the_tracking_server_stores_runs_in_postgres_with_secrets_from_the_environment(compose):
    services = compose["services"]
    mlflow_env = services["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert "@postgres:5432/" in mlflow_env["MLFLOW_BACKEND_STORE_URI"]
    assert "--artifacts-destination" in services["mlflow"]["command"]
    assert any(v.endswith(":/mlartifacts") for v in services["mlflow"]["volumes"])
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key:
                assert str(value).startswith("${"), f"{name}.{key} is hard-coded"
    assert "${POSTGRES_PASSWORD" in mlflow_env["MLFLOW_BACKEND_STORE_URI"]
    assert not re.search(r"postgresql://[^$]*:[^$@]+@", mlflow_env["MLFLOW_BACKEND_STORE_URI"])
    assert "POSTGRES_PASSWORD" not in " ".join(services["mlflow"]["command"])


def test_the_training_container_logs_to_the_teams_server(compose):
    train = compose["services"]["train"]
    assert train["entrypoint"][:3] == ["python", "-m", "cifar_exp"]
    assert "mlflow.tracking_uri=http://mlflow:5000" in train["entrypoint"]
    assert "mlflow" in train["depends_on"]
    allowed = compose["services"]["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]
    assert "mlflow:5000" in allowed  # the Host header the training container sends


def test_the_tracking_servers_image_installs_the_driver_sqlalchemy_opens_postgresql_urls_with(compose):
    """`mlflow server --backend-store-uri postgresql://...` exits at start without the driver SQLAlchemy
    maps that scheme to (psycopg 3 since SQLAlchemy 2.1; psycopg2-binary, installed before, is not it)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from sqlalchemy.engine import make_url

    installed = pip_installs(compose["services"]["mlflow"]["build"]["dockerfile_inline"])
    assert "mlflow" in installed
    for wanted in map(Requirement, postgres_extra()):  # the image installs the postgres extra, as written
        assert str(installed.get(canonicalize_name(wanted.name))) == str(wanted), wanted
    driver = make_url("postgresql://user@host/db").get_dialect().driver  # the module SQLAlchemy imports
    providers = {canonicalize_name(d) for d in metadata.packages_distributions().get(driver, [driver])}
    assert providers & set(installed), f"SQLAlchemy opens postgresql:// with {driver}; the image installs {installed}"
    assert not {"psycopg2", "psycopg2-binary"} & set(installed)
    assert "binary" in installed["psycopg"].extras  # prebuilt: python:3.11-slim has no libpq to build against
