"""Input and output names of an artifact as its own client API reports them, for the sidecar.

* ONNX: ``InferenceSession.get_inputs()[0].name`` / ``get_outputs()[0].name`` (the graph's value
  names); ``session.run(["logits"], {"image": x})``.
* OpenVINO: the tensor names of the model's ports; ``compiled(...)["logits"]`` or ``{"image": x}``.
* TFLite: the signature keys, ``get_signature_runner("serving_default")(image=x)["logits"]``, and the
  tensor names ``get_input_details()`` / ``get_output_details()`` list (``serving_default_image:0``,
  ``StatefulPartitionedCall_1:0``): they differ, so both are recorded.

Every entry has ``name`` (the key a client passes), ``tensor_name``, and for TFLite ``signature`` and
``signature_key``.
"""

from __future__ import annotations

from pathlib import Path


def io_names(path: Path, fmt: str) -> dict[str, dict[str, str | None]]:
    if fmt == "tflite":
        from .tflite import io_names as tflite_names

        return tflite_names(path)
    if fmt == "onnx":
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        initializers = {init.name for init in graph.initializer}
        inputs = [v.name for v in graph.input if v.name not in initializers]
        return {"input": {"name": inputs[0], "tensor_name": inputs[0]},
                "output": {"name": graph.output[0].name, "tensor_name": graph.output[0].name}}
    if fmt == "openvino":
        import openvino as ov

        model = ov.Core().read_model(str(path))
        names = {}
        for side, port in (("input", model.inputs[0]), ("output", model.outputs[0])):
            name = port.get_any_name()
            names[side] = {"name": name, "tensor_name": name}
        return names
    raise ValueError(f"unknown artifact format {fmt!r}")
