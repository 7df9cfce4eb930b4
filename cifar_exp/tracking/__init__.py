"""What a run leaves behind: MLflow runs, tags and secret masking (runs.py), the figures it logs
(plots.py), and reloading a logged model in a fresh process (saved.py).
"""
