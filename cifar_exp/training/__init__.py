"""How a Keras classifier is trained: the fit itself (fit.py: data, model, `model.fit`, evaluation,
figures), optimizers and learning-rate schedules, losses, metrics, the distribution strategy,
per-epoch checkpoints, backend set-up and the verdict on how training ended (outcome.py).
"""
