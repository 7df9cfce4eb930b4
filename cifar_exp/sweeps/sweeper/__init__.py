"""A Hydra sweeper on current Optuna (ask-and-tell), chosen with `hydra/sweeper=cifar_exp_optuna`.

Hydra finds it as the plugin `hydra_plugins.cifar_exp_optuna_sweeper` (in this repository's
hydra_plugins/, installed with the package): that plugin holds the Sweeper class and imports
`config` here, so the public modules stay light; Optuna is imported only by the underscore
modules, once a sweep really starts.
"""
