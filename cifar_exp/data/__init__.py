"""Images and labels in: dataset loading and checks (dataset.py), the archive and folder readers
(readers.py), train/val/test splits (splits.py), augmentation layers (augment.py) and the
device-resident feed (resident.py). Nothing here knows about models or MLflow.
"""
