"""Classify images with the TFLite Task Library (tflite-support), run by tests/test_clients.py in a
second Python environment: tflite-support 0.4.4 needs protobuf 3.20 and its pybind modules clash with
TensorFlow's in one process, so it cannot share the test venv. Prints one JSON list: per image, the
first head's top category and score.

    python task_library_classify.py MODEL.tflite IMAGE.png [IMAGE.png ...]
"""

import json
import sys

import numpy as np
from PIL import Image
from tflite_support.task import core, processor, vision


def main() -> None:
    model, images = sys.argv[1], sys.argv[2:]
    options = vision.ImageClassifierOptions(base_options=core.BaseOptions(file_name=model),
                                            classification_options=processor.ClassificationOptions(max_results=2))
    classifier = vision.ImageClassifier.create_from_options(options)
    results = []
    for path in images:
        pixels = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))
        result = classifier.classify(vision.TensorImage.create_from_array(pixels))
        heads = result.classifications
        top = heads[0].categories[0]
        results.append({"label": top.category_name, "score": float(top.score), "head": heads[0].head_name,
                        "heads": [h.head_name for h in heads]})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
