"""Framework start-up for the CLI: quiet logging/warnings, and TensorFlow imported without its C++
start-up chatter."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings


def quiet_frameworks() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    from ..console import stderr as edgetl_stderr

    # edgetl's warnings reach the terminal even while the converters' chatter is silenced (--verbose).
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=edgetl_stderr)
    for noisy in ("tensorflow", "absl", "tf2onnx", "nncf", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Pillow's DecompressionBombWarning (over 89 MP): edgetl's own, lower pixel cap already refuses
    # those images with a one-line reason (edgetl.preprocess.DecodeRules.max_pixels).
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")


def load_tensorflow() -> None:
    """Import TensorFlow with C++ start-up chatter (CUDA probing, oneDNN banners) silenced: absl
    writes it to fd 2 before any log level applies, so stderr is pointed at /dev/null meanwhile."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow

        tensorflow.config.list_physical_devices()  # CUDA probing happens here, also noisily
        importlib.import_module("keras")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
