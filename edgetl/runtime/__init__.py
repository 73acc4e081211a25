"""The device runtime: run an exported edgetl artifact on images, with numpy + Pillow + one runtime.

    from edgetl.runtime import EdgeModel

    model = EdgeModel.load("model_int8.onnx")            # .onnx / .tflite / .xml (+ sidecar .json)
    model.predict("bee.jpg", top_k=2)                     # [("bees", 0.97), ("ants", 0.03)]
    model.predict([path, pil_image, uint8_array])         # one list of (label, score) per image
    model.predict_batch(paths, batch_size=32)             # batched when the batch dim is dynamic
    model.labels, model.metadata, model.input_size        # sidecar facts
    model.run(model.prepare(images))                      # raw outputs (what the bench times)

The backend follows the artifact type: ``.onnx`` -> onnxruntime, ``.tflite`` -> ai-edge-litert
(LiteRT), ``.xml`` (+ ``.bin``) -> OpenVINO; ``device=`` (cpu, gpu, npu) picks among the runtime's
own execution providers/devices and ``threads=`` fixes its intra-op thread count. Preprocessing is
replayed from the artifact's sidecar ``<artifact>.json`` (resize, crop, normalise, layout, input
quantization), so the artifact sees the pixels its source model was checked on. Paths, PIL images in
any mode and HxW/HxWx3/HxWx4 arrays of any size are decoded under the recipe's decode rules (EXIF
orientation, 16-bit reduced to 8, alpha composited on white, the pixel cap: ``models/README.md``) and
resized/cropped per the recipe; only an HxWx3 uint8 array of exactly ``input_size`` is taken as
already cropped and fed as is.

Thread safety: one ``EdgeModel`` may serve several threads. ONNX Runtime sessions are called
concurrently (``InferenceSession.run`` is thread-safe); LiteRT interpreters and OpenVINO infer
requests are not, so their calls are serialised by a per-model lock (preprocessing still runs in
parallel). For parallel inference on those runtimes, load one model per thread.

Nothing here imports TensorFlow or Keras (a test checks ``sys.modules`` after load + predict).

Installing on a device: the ``edgetl`` distribution's own dependencies include TensorFlow (it is the
training toolkit), so a device install skips them and adds the runtime pieces by hand::

    pip install --no-deps edgetl
    pip install numpy pillow onnxruntime        # or ai-edge-litert, or openvino

The extras ``edgetl[runtime-onnx]``, ``[runtime-tflite]``, ``[runtime-openvino]`` (and ``[runtime]``
= ONNX) name exactly those packages (``pip install --no-deps edgetl`` then
``pip install numpy pillow onnxruntime`` is what they amount to; installing ``edgetl[runtime-onnx]``
without ``--no-deps`` would still pull TensorFlow). To vendor instead, copy ``edgetl/__init__.py``,
``errors.py``, ``metadata.py``, ``preprocess.py`` and ``runtime/`` into the app. A missing runtime
package is reported in one line naming its extra.
"""

from __future__ import annotations

from ..metrics import softmax
from .model import EdgeModel

__all__ = ["EdgeModel", "softmax"]
