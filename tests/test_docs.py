"""The newcomer's page and the documentation site: the README fits on a screen or two and its
set-up commands are the ones CI runs; the configs page is generated from the config tree (so it
cannot drift); run outputs stay out of git."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONF, ROOT

README = (ROOT / "README.md").read_text()


def set_up_commands() -> list[str]:
    block = re.search(r"## Set-up.*?```bash\n(.*?)```", README, re.S)
    return block.group(1).strip().splitlines()


def test_the_readme_fits_in_250_lines_and_links_only_to_pages_that_are_built():
    assert len(README.splitlines()) <= 250
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in re.findall(r"\]\(docs/([\w-]+\.md)", README):
        assert f": {page}" in nav, f"README links docs/{page}, which mkdocs.yml's nav does not list"


def test_the_readme_has_two_set_up_commands_and_ci_runs_its_test_command():
    install, tests = set_up_commands()
    assert install.startswith('pip install -e ".[dev]" && python -m cifar_exp ')
    assert "dataset.path" not in install  # the data is found (Keras' cache) or downloaded
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert 'python -m pip install --quiet -e ".[dev]"' in ci and tests in ci
    assert any(line.startswith("mkdocs build --strict") for line in ci)


def test_the_readme_test_command_runs_the_fast_tier_by_default():
    import tomllib

    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-m 'not slow and not real'" in options["addopts"]


@pytest.mark.slow  # a subprocess collecting every test module
def test_collecting_the_fast_tier_imports_no_keras():
    code = ("import sys, pytest; pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', 'tests']); "
            "print('KERAS' if 'keras' in sys.modules or 'tensorflow' in sys.modules else 'NO KERAS')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300).stdout
    assert out.strip().endswith("NO KERAS"), out[-2000:]


def test_the_configs_page_lists_every_option_with_its_file():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_configs
    finally:
        sys.path.remove(str(ROOT / "docs"))
    page = gen_configs.render()
    assert Path(gen_configs.config_dir()) == CONF
    options = sorted(CONF.glob("*/*.yaml"))
    assert len(options) > 50
    for option in options:
        group, name = option.parent.name, option.stem
        assert f"| `{group}={name}` |" in page, f"{group}={name} missing from the configs page"
        assert option.read_text().rstrip() in page  # the file as it is
    assert "| `model=alexnet` | Seed 002: AlexNet shrunk for 32x32 inputs" in page


@pytest.mark.parametrize("path, ignored", [
    ("reports/sweep_abc/report.md", True), ("outputs/2026-12-04/10-00-00/job.log", True),
    ("multirun/2026-12-04/10-00-00/0/job_status.json", True), ("mlflow.db", True), ("mlruns/1/meta.yaml", True),
    ("site/index.html", True), ("multirun/README.md", False), ("docs/index.md", False),
])
def test_run_outputs_are_ignored_by_git(path, ignored):
    result = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
    assert result.returncode == (0 if ignored else 1), path
