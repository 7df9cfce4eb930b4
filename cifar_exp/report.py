"""Kept so that `python -m cifar_exp.report` (README, cifar_exp/conf/experiment comments) goes on working;
the code lives in cifar_exp/sweeps/report.py."""
import sys

from cifar_exp.sweeps.report import main

if __name__ == "__main__":
    sys.exit(main())
