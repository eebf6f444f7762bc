"""Importing the heavy frameworks the same way everywhere (quietly, logs set up first)."""
from __future__ import annotations

import os


def import_tensorflow():
    """TensorFlow with its C++ log noise off (TF_CPP_MIN_LOG_LEVEL must be set before the first import)."""
    from deploykit.quiet import captured_output

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with captured_output():
        import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    return tf
