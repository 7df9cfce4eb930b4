"""Seed 002's K-fold question: polynomial regression on data from a known polynomial plus noise.
Does K-fold cross-validation pick the true degree, or a more complex one, and how does that
depend on the noise and the sample size? Pure numpy; `run` logs to MLflow through the tracker.

Data: x ~ U(-1, 1), y = p(x) + N(0, noise^2), p of degree `true_degree` with coefficients of
magnitude 0.5..1.5 (so its top term matters). Candidate degrees 1..max_degree, fitted by least
squares on each training fold. The same polynomial is sampled `repeats` times so the choice is a
frequency, not one draw.
"""
from __future__ import annotations

import logging
import math
import numbers

import numpy as np

from cifar_exp.errors import ConfigError

log = logging.getLogger(__name__)

KFOLD_METRICS = ("cv_mse", "test_mse")  # what the task returns, for `optimized_metric`
TEST_SAMPLES = 10_000  # fresh points per repeat to measure the chosen model's test error


def _int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check(cfg) -> None:
    k = cfg.get("kfold")
    if k is None:
        raise ConfigError("kfold", None, "a kfold block (use experiment=kfold_poly)")
    if cfg.optimized_metric not in KFOLD_METRICS:
        raise ConfigError("optimized_metric", cfg.optimized_metric, ", ".join(KFOLD_METRICS) + " for task=kfold_poly")
    if not (_int(k.true_degree) and k.true_degree >= 0):
        raise ConfigError("kfold.true_degree", k.true_degree, "an integer >= 0")
    if not (_int(k.max_degree) and k.max_degree >= 1):
        raise ConfigError("kfold.max_degree", k.max_degree, "an integer >= 1")
    if not (isinstance(k.noise, numbers.Real) and not isinstance(k.noise, bool) and k.noise >= 0):
        raise ConfigError("kfold.noise", k.noise, "a standard deviation >= 0")
    if not (_int(k.folds) and k.folds >= 2):
        raise ConfigError("kfold.folds", k.folds, "an integer >= 2")
    if not (_int(k.n_samples) and k.n_samples >= k.folds):
        raise ConfigError("kfold.n_samples", k.n_samples, f"an integer >= kfold.folds={k.folds}")
    smallest_train = k.n_samples - math.ceil(k.n_samples / k.folds)
    if k.max_degree + 1 > smallest_train:
        raise ConfigError("kfold.max_degree", k.max_degree,
                          f"at most {smallest_train - 1}: a degree-d fit needs d+1 points and the smallest "
                          f"training fold has {smallest_train} (kfold.n_samples={k.n_samples}, kfold.folds={k.folds})")
    if not (_int(k.repeats) and k.repeats >= 1):
        raise ConfigError("kfold.repeats", k.repeats, "an integer >= 1")
    if not (_int(k.seed) and k.seed >= 0):
        raise ConfigError("kfold.seed", k.seed, "an integer >= 0")


def true_coefficients(true_degree: int, seed: int) -> np.ndarray:
    """Coefficients c_0..c_d (lowest first) of the known polynomial: |c_i| in [0.5, 1.5], random signs."""
    rng = np.random.default_rng([seed, 0])
    return rng.uniform(0.5, 1.5, true_degree + 1) * rng.choice([-1.0, 1.0], true_degree + 1)


def sample(coefficients: np.ndarray, noise: float, n: int, rng: np.random.Generator):
    x = rng.uniform(-1.0, 1.0, n)
    return x, np.polynomial.polynomial.polyval(x, coefficients) + rng.normal(0.0, noise, n)


def fit(x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
    """Least-squares coefficients (lowest first)."""
    return np.polynomial.polynomial.polyfit(x, y, degree)


def mse(coefficients: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.polynomial.polynomial.polyval(x, coefficients) - y) ** 2))


def cross_validate(x, y, degrees, folds: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per degree: mean training-fold MSE, mean validation-fold MSE and its standard error over folds."""
    parts = np.array_split(rng.permutation(len(x)), folds)
    train = np.zeros((len(degrees), folds))
    val = np.zeros((len(degrees), folds))
    for j, held_out in enumerate(parts):
        keep = np.setdiff1d(np.arange(len(x)), held_out)
        for i, degree in enumerate(degrees):
            c = fit(x[keep], y[keep], degree)
            train[i, j], val[i, j] = mse(c, x[keep], y[keep]), mse(c, x[held_out], y[held_out])
    return {"train_mse": train.mean(1), "val_mse": val.mean(1), "val_mse_se": val.std(1, ddof=1) / np.sqrt(folds)}


def choose(degrees, val_mse: np.ndarray, val_se: np.ndarray) -> tuple[int, int]:
    """(min-CV degree, one-standard-error degree): the latter is the smallest degree whose CV error is
    within one standard error of the minimum, the usual guard against CV's noise favouring complexity."""
    best = int(np.argmin(val_mse))
    within = np.flatnonzero(val_mse <= val_mse[best] + val_se[best])
    return int(degrees[best]), int(degrees[within[0]])


def study(true_degree: int, noise: float, n_samples: int, max_degree: int, folds: int, repeats: int,
          seed: int) -> dict:
    """Everything the task reports, as plain arrays and numbers (repeat 0 is "the" dataset shown)."""
    degrees = np.arange(1, max_degree + 1)
    coefficients = true_coefficients(true_degree, seed)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence([seed, 1]).spawn(repeats)]
    curves, chosen, chosen_1se, test, test_1se, test_true = [], [], [], [], [], []
    for rng in rngs:
        x, y = sample(coefficients, noise, n_samples, rng)
        cv = cross_validate(x, y, degrees, folds, rng)
        d, d_1se = choose(degrees, cv["val_mse"], cv["val_mse_se"])
        x_test, y_test = sample(coefficients, noise, TEST_SAMPLES, rng)
        test.append(mse(fit(x, y, d), x_test, y_test))
        test_1se.append(mse(fit(x, y, d_1se), x_test, y_test))
        test_true.append(mse(fit(x, y, true_degree), x_test, y_test) if true_degree + 1 <= n_samples else math.nan)
        curves.append(cv)
        chosen.append(d)
        chosen_1se.append(d_1se)
        if len(curves) == 1:
            first = (x, y)
    chosen, chosen_1se = np.array(chosen), np.array(chosen_1se)
    return {
        "degrees": degrees, "coefficients": coefficients, "data": first, "cv": curves[0],
        "mean_val_mse": np.mean([c["val_mse"] for c in curves], axis=0),
        "mean_train_mse": np.mean([c["train_mse"] for c in curves], axis=0),
        "chosen": chosen, "chosen_1se": chosen_1se,
        "test_mse": float(np.mean(test)), "test_mse_1se": float(np.mean(test_1se)),
        "test_mse_true_degree": float(np.mean(test_true)),
    }


def summary_metrics(result: dict, true_degree: int, noise: float) -> dict[str, float]:
    cv, degrees = result["cv"], result["degrees"]
    d, d_1se = choose(degrees, cv["val_mse"], cv["val_mse_se"])
    metrics = {
        "chosen_degree": d, "chosen_degree_1se": d_1se,
        "cv_mse": float(cv["val_mse"][d - 1]), "irreducible_mse": noise ** 2,
        "test_mse": result["test_mse"], "test_mse_1se": result["test_mse_1se"],
        "test_mse_true_degree": result["test_mse_true_degree"],
    }
    for rule, picks in (("min_cv", result["chosen"]), ("1se", result["chosen_1se"])):
        metrics[f"mean_chosen_degree_{rule}"] = float(picks.mean())
        metrics[f"frac_over_{rule}"] = float(np.mean(picks > true_degree))
        metrics[f"frac_exact_{rule}"] = float(np.mean(picks == true_degree))
        metrics[f"frac_under_{rule}"] = float(np.mean(picks < true_degree))
    return metrics


def figure(result: dict, true_degree: int, noise: float):
    """Training vs CV error against degree (repeat 0), the chosen degrees over all repeats, the fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    degrees, cv = result["degrees"], result["cv"]
    d, d_1se = choose(degrees, cv["val_mse"], cv["val_mse_se"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(degrees, cv["train_mse"], marker="o", label="training folds")
    ax.errorbar(degrees, cv["val_mse"], yerr=cv["val_mse_se"], marker="o", capsize=3, label="validation folds (±1 SE)")
    if noise > 0:
        ax.axhline(noise ** 2, color="grey", ls=":", label="noise variance")
    ax.axvline(true_degree, color="green", ls="--", label=f"true degree {true_degree}")
    ax.axvline(d, color="red", ls="-", alpha=0.5, label=f"min CV: {d}")
    ax.axvline(d_1se, color="purple", ls="-.", alpha=0.7, label=f"1-SE rule: {d_1se}")
    ax.set(xlabel="polynomial degree", ylabel="MSE", yscale="log", title="K-fold error (first dataset)")
    ax.legend(fontsize=8)
    ax = axes[1]
    bins = np.arange(0.5, degrees[-1] + 1.5)
    ax.hist([result["chosen"], result["chosen_1se"]], bins=bins, label=["min CV", "1-SE rule"])
    ax.axvline(true_degree, color="green", ls="--")
    ax.set(xlabel="chosen degree", ylabel="datasets", title=f"choice over {len(result['chosen'])} datasets")
    ax.legend(fontsize=8)
    ax = axes[2]
    x, y = result["data"]
    grid = np.linspace(-1, 1, 200)
    ax.scatter(x, y, s=8, alpha=0.6, label="data")
    ax.plot(grid, np.polynomial.polynomial.polyval(grid, result["coefficients"]), color="green", label="true")
    ax.plot(grid, np.polynomial.polynomial.polyval(grid, fit(x, y, d)), color="red", alpha=0.7, label=f"degree {d}")
    ax.set(xlabel="x", ylabel="y", title="first dataset")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run(cfg, tracker, checkpoint_dir: str | None = None) -> dict[str, float]:
    """The study, its per-degree curves, figure and table logged through `tracker`; numpy only, nothing
    to checkpoint (`checkpoint_dir` is unused: a stopped study starts again)."""
    k = cfg.kfold
    result = study(k.true_degree, float(k.noise), k.n_samples, k.max_degree, k.folds, k.repeats, k.seed)
    cv = result["cv"]
    for i, degree in enumerate(result["degrees"]):
        tracker.log_metrics({
            "train_mse": cv["train_mse"][i], "val_mse": cv["val_mse"][i], "val_mse_se": cv["val_mse_se"][i],
            "mean_train_mse": result["mean_train_mse"][i], "mean_val_mse": result["mean_val_mse"][i],
            "chosen_fraction_min_cv": np.mean(result["chosen"] == degree),
            "chosen_fraction_1se": np.mean(result["chosen_1se"] == degree),
        }, step=int(degree))
    metrics = summary_metrics(result, k.true_degree, float(k.noise))
    tracker.log_metrics(metrics)
    tracker.set_tags({"kfold.chosen_degree": metrics["chosen_degree"],
                      "kfold.chosen_degree_1se": metrics["chosen_degree_1se"]})
    tracker.log_figure(figure(result, k.true_degree, float(k.noise)), "kfold_degree.png")
    rows = ["degree,train_mse,val_mse,val_mse_se,chosen_fraction_min_cv,chosen_fraction_1se"]
    rows += [f"{d},{cv['train_mse'][i]:.6g},{cv['val_mse'][i]:.6g},{cv['val_mse_se'][i]:.6g},"
             f"{np.mean(result['chosen'] == d):.3f},{np.mean(result['chosen_1se'] == d):.3f}"
             for i, d in enumerate(result["degrees"])]
    tracker.log_text("\n".join(rows) + "\n", "kfold_degree.csv")
    log.info("true degree %d, noise %g, %d samples, %d folds: min CV chose %d (1-SE rule %d); over %d datasets "
             "min CV chose a higher degree %.0f%%, the true one %.0f%%, a lower one %.0f%% of the time "
             "(1-SE rule: %.0f%% / %.0f%% / %.0f%%)", k.true_degree, k.noise, k.n_samples, k.folds,
             metrics["chosen_degree"], metrics["chosen_degree_1se"], k.repeats,
             100 * metrics["frac_over_min_cv"], 100 * metrics["frac_exact_min_cv"], 100 * metrics["frac_under_min_cv"],
             100 * metrics["frac_over_1se"], 100 * metrics["frac_exact_1se"], 100 * metrics["frac_under_1se"])
    return metrics
