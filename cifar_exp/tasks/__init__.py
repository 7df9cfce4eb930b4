"""The kinds of job `task=` chooses: image classification (classify.py), the k-fold polynomial
study (kfold.py) and LeNet transfer (transfer.py).
"""
