"""Every registered backbone builds at its input size with the documented feature shape; weights
files round-trip; unknown names and missing weights are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl import zoo
from edgetl.errors import UsageError

# Feature-map side per backbone at its default input size.
EXPECTED_SPATIAL = {"inception_v3": 8, "efficientnet_lite1": 8, "efficientnet_lite2": 9}


@pytest.mark.parametrize("name", zoo.names())
def test_builds_with_documented_features(name):
    import keras

    spec = zoo.get(name)
    model = spec.build("none")
    side = EXPECTED_SPATIAL.get(name, 7)
    assert tuple(model.output_shape[1:]) == (side, side, spec.feature_dim)
    assert tuple(model.input_shape[1:]) == (spec.input_size, spec.input_size, 3)
    assert spec.preprocessing.input_size == (spec.input_size, spec.input_size)
    keras.backend.clear_session()


def test_weights_file_round_trip(tmp_path):
    spec = zoo.get("mobilenet_v3_small")
    first = spec.build("none", input_size=96)
    path = tmp_path / "w.weights.h5"
    first.save_weights(path)
    second = spec.build(str(path), input_size=96)
    x = np.random.default_rng(0).normal(size=(2, 96, 96, 3)).astype(np.float32)
    np.testing.assert_array_equal(first.predict(x, verbose=0), second.predict(x, verbose=0))
    fresh = spec.build("none", input_size=96)
    assert not np.allclose(first.predict(x, verbose=0), fresh.predict(x, verbose=0), rtol=1e-3, atol=0)


def test_unknown_backbone():
    with pytest.raises(UsageError, match="unknown backbone 'resnet9000'.*mobilenet_v2"):
        zoo.get("resnet9000")


def test_wrong_weights_file(tmp_path):
    spec = zoo.get("mobilenet_v3_small")
    path = tmp_path / "w.weights.h5"
    spec.build("none", input_size=96).save_weights(path)
    with pytest.raises(UsageError, match="does not fit"):
        zoo.get("mobilenet_v2").build(str(path), input_size=96)
    with pytest.raises(UsageError, match="does not exist"):
        spec.build(str(tmp_path / "nope.weights.h5"))


def test_offline_imagenet_is_one_line_with_ways_out(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # empty cache: forces a download attempt
    import keras

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] "
                        "Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    with pytest.raises(UsageError) as info:
        zoo.get("mobilenet_v2").build("imagenet")
    message = str(info.value)
    assert "\n" not in message and "--weights PATH" in message and "--weights none" in message
