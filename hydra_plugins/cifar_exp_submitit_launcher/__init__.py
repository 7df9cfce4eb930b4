"""Hydra's submitit Slurm launcher with what a sweep's record needs (`hydra/launcher=submitit_slurm`,
through cifar_exp/conf/hydra/launcher/submitit_slurm.yaml); the class is in `slurm_launcher`."""
