"""A Hydra sweeper on current Optuna (ask-and-tell), installed as the Hydra plugin
`hydra_plugins.cifar_exp_optuna_sweeper` (see pyproject.toml) and chosen with
`hydra/sweeper=cifar_exp_optuna`.

Hydra imports every public module here when it scans for plugins, so they stay light:
Optuna is imported only by the underscore modules, once a sweep really starts.
"""
