"""Make the PyTorch test model of ``tests/test_foreign.py``: a small MobileNetV2 (torchvision's
architecture, width 0.35) trained briefly on edgetl's embedded ant/bee sample at 64 px, exported
with ``torch.onnx.export`` (NCHW input, dynamic batch, logits out), plus its own outputs on a few
of those photos.

PyTorch is not an edgetl dependency (a CPU wheel is ~200 MB, a CUDA one several GB), so this runs
once, in a throwaway virtualenv, and its two small files are kept as test data:

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 numpy pillow onnx
    /tmp/torchvenv/bin/python tools/make_foreign_models.py   # -> tests/data/torch_mnv2_ants_bees.{onnx,npz}

The network is written out here (torchvision.models.mobilenet_v2's blocks) because torchvision's PyPI
wheel for torch 2.13 did not load beside the CPU torch wheel. No pretrained weights are reachable,
so it is trained from scratch for a few epochs: enough for predictions that follow the photos.

Preprocessing is edgetl's ``torchvision`` preset replayed by ``edgetl.preprocess`` (numpy + Pillow,
importable without TensorFlow): resize the shorter side to 73 (64 / 0.875), centre crop 64, bilinear,
0..1, ImageNet mean/std. The npz keeps the photos' paths (relative to the repository), the uint8
crops, and the model's logits on them in PyTorch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgetl.preprocess import Preprocessing, open_image  # noqa: E402  (numpy + Pillow only)

SAMPLE = ROOT / "edgetl" / "samples" / "hymenoptera"
OUT = ROOT / "tests" / "data"
NAME = "torch_mnv2_ants_bees"
SIZE = 64
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RECIPE = Preprocessing(input_size=(SIZE, SIZE), resize_shorter=round(SIZE / 0.875), interpolation="bilinear",
                       mean=tuple(m * 255 for m in MEAN), std=tuple(s * 255 for s in STD), layout="NCHW")


def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn(cin, hidden, 1, 1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


def make_divisible(value: float, divisor: int = 8) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class MobileNetV2(nn.Module):
    """torchvision.models.mobilenet_v2(width_mult=0.35) with a 2-class head."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 2, width: float = 0.35):
        super().__init__()
        cin = make_divisible(32 * width)
        layers = [conv_bn(3, cin, 3, 2)]
        for expand, channels, repeats, stride in self.SETTINGS:
            cout = make_divisible(channels * width)
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        last = make_divisible(1280 * max(1.0, width))
        layers.append(conv_bn(cin, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def photos() -> tuple[list[Path], np.ndarray]:
    paths, labels = [], []
    for index, name in enumerate(("ants", "bees")):
        found = sorted(p for p in (SAMPLE / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        paths += found
        labels += [index] * len(found)
    return paths, np.asarray(labels)


def tensors(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(RECIPE.normalize(pixels).transpose(0, 3, 1, 2)))


EPOCHS = 80  # from scratch on 244 photos: confident enough that INT8 rounding rarely flips a photo


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic, and kind to a shared machine
    paths, labels = photos()
    pixels = np.stack([RECIPE.resize_and_crop(open_image(p, RECIPE.decode)) for p in paths])
    model = MobileNetV2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    x, y = tensors(pixels), torch.from_numpy(labels)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(x))
        for start in range(0, len(x), 16):
            batch = order[start:start + 16]
            flipped = torch.where(torch.rand(len(batch), 1, 1, 1) < 0.5, x[batch].flip(3), x[batch])
            loss = nn.functional.cross_entropy(model(flipped), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
        print(f"epoch {epoch + 1}/{EPOCHS}: last batch loss {loss.item():.3f}", flush=True)
    model.eval()
    with torch.no_grad():
        logits = model(x).numpy()
    print(f"train accuracy after {EPOCHS} epochs: {(logits.argmax(1) == labels).mean():.3f}")
    OUT.mkdir(parents=True, exist_ok=True)
    onnx_path = OUT / f"{NAME}.onnx"
    torch.onnx.export(model, x[:1], str(onnx_path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    keep = list(range(0, len(paths), 6))  # 41 of the 244 photos, both classes
    np.savez_compressed(OUT / f"{NAME}.npz", paths=np.asarray([str(paths[i].relative_to(ROOT)) for i in keep]),
                        pixels=pixels[keep], logits=logits[keep].astype(np.float32), labels=labels[keep],
                        torch_version=np.asarray(torch.__version__))
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB) and {NAME}.npz")


if __name__ == "__main__":
    main()
