"""The joblib launcher that loses only the job whose worker dies (`hydra/launcher=joblib`, selected by
cifar_exp.sweeps.launcher.register); the class is in joblib_launcher, its work in cifar_exp.sweeps.launcher."""
