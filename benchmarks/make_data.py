"""Generate the benchmark inputs (never committed) into benchmarks/data/.

- ResNet50 with random weights (keras.applications.ResNet50(weights=None)) as .h5,
  .keras and a SavedModel export;
- a ~1 GB .h5 of large Dense layers, and two more that differ everywhere (for diff, merge);
  the first one also as .keras and as a SavedModel export;
- a model with one tensor larger than 1.5 GB (Dense 20000 x 20000).

Each file is made once; delete benchmarks/data/ to regenerate.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

DATA = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "data")


def dense_stack(width: int, depth: int, seed: int, name: str):
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((width,))]
    layers += [keras.layers.Dense(width, name=f"dense_{i}") for i in range(depth)]
    return keras.Sequential(layers, name=name)


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    import keras

    resnet = None
    for target, save in (
        ("resnet50.h5", lambda m, p: m.save(p)),
        ("resnet50.keras", lambda m, p: m.save(p)),
        ("resnet50_export", lambda m, p: m.export(str(p), verbose=False)),
    ):
        p = DATA / target
        if not p.exists():
            resnet = resnet or keras.applications.ResNet50(weights=None)
            save(resnet, p)
            print("wrote", p, flush=True)
    # 16 Dense 4096x4096 layers: 16 x 16.8 M float32 = 1.07 GB.
    for target, seed in (("dense_1gb.h5", 1), ("dense_1gb_b.h5", 2), ("dense_1gb_c.h5", 3)):
        p = DATA / target
        if not p.exists():
            dense_stack(4096, 16, seed, "dense1gb").save(p)
            print("wrote", p, flush=True)
    # The same 1 GB model as a .keras archive and as a SavedModel bundle.
    big = None
    for target, save in (
        ("dense_1gb.keras", lambda m, p: m.save(p)),
        ("dense_1gb_export", lambda m, p: m.export(str(p), verbose=False)),
    ):
        p = DATA / target
        if not p.exists():
            big = big or dense_stack(4096, 16, 1, "dense1gb")
            save(big, p)
            print("wrote", p, flush=True)
    p = DATA / "huge_tensor.h5"
    if not p.exists():
        # One 20000 x 20000 kernel: 400 M float32 = 1.6 GB.
        dense_stack(20000, 1, 3, "huge").save(p)
        print("wrote", p, flush=True)


if __name__ == "__main__":
    main()
