"""Process-wide backend settings applied before Keras' backend starts: XLA's persistent compilation
cache (`trainer.compile_cache`) and GPU memory (`trainer.gpu_memory`).

Both work through environment variables (and, when JAX is already imported, `jax.config`), so this
module imports neither TensorFlow nor JAX. job.py calls `configure` before it imports training/fit.py, the
first import of Keras in a job. A process keeps the settings of its first job: a backend reads them
when it starts, and it starts once.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

from cifar_exp.errors import ConfigError

log = logging.getLogger(__name__)
GPU_MEMORY = ("auto", "grow", "preallocate")
OFF_WORDS = ("off", "none", "no", "false", "disable", "disabled")


def check_backend_settings(trainer) -> None:
    cache = trainer.get("compile_cache", "auto")
    if cache is not None and not (isinstance(cache, str) and cache):
        raise ConfigError("trainer.compile_cache", cache, "auto, a folder, or null (no persistent cache)")
    if cache is not None and "://" in cache:  # XLA writes to a local folder; a URL would become a folder named after it
        raise ConfigError("trainer.compile_cache", cache, "auto, a local folder (not a URL), or null")
    if cache not in (None, "auto") and cache.lower() in OFF_WORDS:  # would become a folder of that name
        raise ConfigError("trainer.compile_cache", cache, "null to switch the cache off; auto or a folder")
    if cache not in (None, "auto") and Path(cache).expanduser().exists() and not Path(cache).expanduser().is_dir():
        raise ConfigError("trainer.compile_cache", cache, "auto, a folder (this is a file), or null")
    if cache is not None and not _creatable(cache_folder(cache)):
        where = f" (auto is {cache_folder(cache)}, not writable: set XDG_CACHE_HOME)" if cache == "auto" else ""
        raise ConfigError("trainer.compile_cache", cache, f"a folder this user can create or write to{where}, or null")
    memory = trainer.get("gpu_memory", "auto")
    fraction = isinstance(memory, (int, float)) and not isinstance(memory, bool)
    if not (memory in GPU_MEMORY or fraction and 0 < memory <= 1):
        raise ConfigError("trainer.gpu_memory", memory, "auto, grow, preallocate or a fraction in (0, 1]")
    if fraction and keras_backend() != "jax":
        raise ConfigError("trainer.gpu_memory", memory,
                          f"auto, grow or preallocate under KERAS_BACKEND={keras_backend()} (a fraction: JAX only)")


def _creatable(folder: Path) -> bool:
    """Whether `folder` exists and is writable, or its nearest existing parent is a writable folder."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def keras_backend() -> str:
    """The backend Keras will load, without importing it (job.py's run tags read it the same way)."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def cache_folder(setting) -> Path | None:
    """The folder for `trainer.compile_cache` (auto: $XDG_CACHE_HOME or ~/.cache, then cifar_exp/xla)."""
    if setting is None:
        return None
    if setting == "auto":
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cifar_exp" / "xla"
    return Path(setting).expanduser()


def configure(trainer, shared_gpu: bool = False) -> dict[str, str]:
    """Apply the compile cache and the GPU memory setting of `trainer` (cfg.trainer) to this process.

    `shared_gpu`: jobs of this sweep run in parallel (the joblib launcher), so `gpu_memory=auto` grows.
    Returns the environment variables set (for the run's tags). A setting the user gave in the
    environment (JAX_COMPILATION_CACHE_DIR, XLA_PYTHON_CLIENT_*) wins over auto.
    """
    applied: dict[str, str] = {}
    folder = cache_folder(trainer.get("compile_cache", "auto"))
    backend = keras_backend()
    if folder is not None:
        if backend == "jax":
            applied.update(_jax_cache(folder / "jax", explicit=trainer.get("compile_cache", "auto") != "auto"))
        elif backend == "tensorflow":
            applied.update(_tensorflow_cache(folder / "tensorflow"))
    applied.update(_gpu_memory(trainer.get("gpu_memory", "auto"), shared_gpu, backend))
    return applied


def _jax_cache(folder: Path, explicit: bool) -> dict[str, str]:
    # JAX writes an entry with a plain write_bytes (jax 0.10 lru_cache.py: not atomic), but parallel
    # jobs are still safe: a reader of a torn entry gets a decode error, which JAX turns into a
    # warning and a fresh compile (compiler._cache_read); entries are keyed by a hash of the program.
    if not explicit and os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # the user's folder wins over auto
        folder = Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    # Every program, not only those that compiled for over 1 s (JAX's default): a job's evaluation
    # step and its eager ops (initializers, casts) each compile in well under a second, yet together
    # they are seconds of every job's first epoch. An entry is a few kB to a few MB.
    min_time = os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)  # read by jax's config when jax is imported
    if "jax" in sys.modules:  # already imported (tests, a second job in this process)
        import jax

        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_time))
    return {"JAX_COMPILATION_CACHE_DIR": str(folder), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": min_time}


def _tensorflow_cache(folder: Path) -> dict[str, str]:
    # TensorFlow's XLA persistent cache (tf_xla_persistent_cache_directory, a TF_XLA_FLAGS flag
    # parsed once, when TensorFlow first reads its XLA flags) covers jit-compiled functions such as
    # Keras' train step with jit_compile; not measured here (no GPU).
    flag = f"--tf_xla_persistent_cache_directory={folder}"
    current = os.environ.get("TF_XLA_FLAGS", "")
    if "tf_xla_persistent_cache_directory" in current:
        return {}
    if "tensorflow" in sys.modules:
        log.warning("trainer.compile_cache: TensorFlow was imported before the job configured it; "
                    "its XLA flags may already be read, so the persistent cache may be off in this process")
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TF_XLA_FLAGS"] = f"{current} {flag}".strip()
    return {"TF_XLA_FLAGS": os.environ["TF_XLA_FLAGS"]}


def _gpu_memory(setting, shared_gpu: bool, backend: str) -> dict[str, str]:
    if setting == "auto":
        setting = "grow" if shared_gpu else "preallocate"
    if setting == "preallocate":
        return {}
    if backend == "jax":
        values = ({"XLA_PYTHON_CLIENT_PREALLOCATE": "false"} if setting == "grow"
                  else {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{float(setting):.3f}"})
    elif backend == "tensorflow":
        values = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}  # tf.config's memory growth, before TF starts
    else:
        return {}
    already = {k for k in values if k in os.environ and os.environ[k] != values[k]}
    if already:
        log.warning("trainer.gpu_memory=%s: keeping %s from the environment", setting,
                    ", ".join(f"{k}={os.environ[k]}" for k in sorted(already)))
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in values}


# The caches a job keeps under HOME, as (environment variable that moves it, its default under HOME).
HOME_CACHES = (("XDG_CACHE_HOME", ".cache"), ("KERAS_HOME", ".keras"), ("MPLCONFIGDIR", ".config/matplotlib"))


def _unusable(folder: Path) -> str | None:
    """Why `folder` cannot hold a cache (created, and one 4 KiB file written and removed), or None."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".cifar_exp-probe") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        return error.strerror or str(error)
    return None


def move_caches_off_unwritable_home() -> dict[str, str]:
    """When HOME cannot hold caches (read-only, full, not a folder, a container user without one),
    point the caches kept there (XDG_CACHE_HOME: trainer.compile_cache=auto's XLA cache and others;
    KERAS_HOME; MPLCONFIGDIR) at a private temporary folder, with one warning naming it. A variable
    already set wins. Returns the variables set ({} when HOME is usable); call before Keras or
    matplotlib is imported. Explicit folders (trainer.compile_cache, dataset.cache_dir) are the
    config's: a decoded-data cache that cannot be written is skipped by data/readers.py."""
    home = Path(os.path.expanduser("~"))
    moved = [(name, home / default) for name, default in HOME_CACHES if not os.environ.get(name)]
    why = next((reason for reason in (_unusable(folder) for _, folder in moved) if reason), None)
    if why is None:
        return {}
    import tempfile

    base = Path(tempfile.gettempdir()) / f"cifar_exp-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    if base.stat().st_uid != os.getuid() or _unusable(base):  # another user's folder of that name
        base = Path(tempfile.mkdtemp(prefix="cifar_exp-"))
    applied = {name: str(base / Path(default).name.lstrip(".")) for name, default in
               ((n, d) for n, d in HOME_CACHES if not os.environ.get(n))}
    os.environ.update(applied)
    _warn_once(str(home), why, str(base), tuple(applied))
    return applied


@functools.cache  # once per process: a sweep's jobs share the folder
def _warn_once(home: str, why: str, base: str, names: tuple[str, ...]) -> None:
    log.warning("HOME (%s) cannot hold caches (%s): they go to %s for this job (%s set there); "
                "set %s to a writable folder to choose another", home, why, base, ", ".join(names), " / ".join(names))
