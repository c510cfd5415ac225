"""The tutorial route weightcli is compared with: load the model, scale every kernel, save."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402

model = keras.models.load_model(sys.argv[1], compile=False)
for layer in model.layers:
    for w in layer.weights:
        if w.path.endswith("kernel"):
            w.assign(w.numpy() * 0.5)
model.save(sys.argv[2])
