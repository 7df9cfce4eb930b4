"""Self-paced learning: the weighting schemes as pure numpy (weighting.py, `weighting=` options)
and the Keras callback that applies them during fit (callback.py).
"""
