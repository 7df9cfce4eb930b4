"""Wall-clock seconds to load the real CIFAR-10: the first load (checksum, read, decode, write the
.npz cache) against later loads from the cache. Usage:

    python benchmarks/data_load.py [PATH]   # PATH defaults to $CIFAR10_PATH
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cifar_exp.data.dataset import load_dataset  # noqa: E402
from cifar_exp.data.readers import checksum  # noqa: E402


def main(path: str, repeats: int = 3) -> None:
    cfg = OmegaConf.load(ROOT / "cifar_exp" / "conf" / "dataset" / "cifar10.yaml")
    cfg.path = path
    with tempfile.TemporaryDirectory() as cache_dir:
        cfg.cache_dir = cache_dir
        t = time.perf_counter()
        checksum(Path(path))
        print(f"sha256 of the source:           {time.perf_counter() - t:6.2f} s")
        t = time.perf_counter()
        first = load_dataset(cfg, seed=0)
        print(f"first load (decode + cache):    {time.perf_counter() - t:6.2f} s  "
              f"({first.info['layout']}, {len(first.y_train) + len(first.y_test)} images, "
              f"decode {first.info['decode_seconds']:.2f} s)")
        for _ in range(repeats):
            t = time.perf_counter()
            again = load_dataset(cfg, seed=0)
            assert again.info["cache"] == "hit"
            print(f"cached load:                    {time.perf_counter() - t:6.2f} s")
        size = Path(first.info["cache_file"]).stat().st_size / 2**20
        print(f"cache file:                     {size:6.0f} MiB")


if __name__ == "__main__":
    source = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CIFAR10_PATH")
    if not source:
        sys.exit("usage: python benchmarks/data_load.py PATH (or set CIFAR10_PATH)")
    main(source)
