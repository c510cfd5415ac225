"""The baseline for `verify --no-load`: read every tensor with TensorFlow's checkpoint reader."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

reader = tf.train.load_checkpoint(sys.argv[1])
for key in reader.get_variable_to_shape_map():
    value = reader.get_tensor(key)
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        assert np.isfinite(value).all(), key
