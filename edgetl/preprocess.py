"""Preprocessing recipes as data, replayed with numpy + Pillow only.

Every backbone records how its input is made (resize, crop, normalisation) as a ``Preprocessing``
value. Training, evaluation, export calibration, the bench and the device runtime all call
``load_image``/``prepare`` so an artifact sees exactly the pixels its reference model saw.
This module must never import TensorFlow: the runtime embeds it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

# GIF (animated frames), TIFF and friends decode differently across libraries; training, export and
# runtime agree only on these.
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


class ImageDecodeError(ValueError):
    """The file is not an image the pipeline takes (corrupt, truncated, or an unsupported kind)."""


@dataclass(frozen=True)
class Preprocessing:
    """How raw RGB uint8 pixels become the model's float input.

    Steps: resize so the shorter side is ``resize_shorter`` (``interpolation``), centre-crop to
    ``input_size`` (H, W), reorder channels to ``channel_order``, then ``(x - mean) / std`` per channel
    with ``x`` in 0..255 (mean/std given in the output channel order).
    """

    input_size: tuple[int, int] = (224, 224)
    resize_shorter: int | None = 256
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    channel_order: str = "RGB"
    layout: str = "NHWC"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("input_size", "mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def with_input_size(self, size: int | Sequence[int]) -> "Preprocessing":
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        # Keep the backbone's crop ratio (224/256 for most) at the new size.
        ratio = (self.resize_shorter / self.input_size[0]) if self.resize_shorter else None
        shorter = round(min(height, width) * ratio) if ratio else None
        return dataclasses.replace(self, input_size=(height, width), resize_shorter=shorter)

    @property
    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """``x * scale + shift`` form of the normalisation (what a uint8-input graph folds in)."""
        std = np.asarray(self.std, np.float32)
        return 1.0 / std, -np.asarray(self.mean, np.float32) / std

    # -- pixels ---------------------------------------------------------------------------------
    def resize_and_crop(self, image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
        """RGB PIL image -> uint8 HxWx3 array, no normalisation.

        By default: the recipe (shorter side to ``resize_shorter``, centre crop ``input_size``). With an
        explicit ``size`` (a training canvas): shorter side to fit ``size``, centre crop ``size``.
        """
        height, width = size or self.input_size
        image = image.convert("RGB")
        resample = _RESAMPLE[self.interpolation]
        if self.resize_shorter:
            shorter = min(height, width) if size else self.resize_shorter
            w, h = image.size
            scale = shorter / min(w, h)
            new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
            if (new_w, new_h) != (w, h):
                image = image.resize((new_w, new_h), resample)
            left, top = (new_w - width) // 2, (new_h - height) // 2
            image = image.crop((left, top, left + width, top + height))
        elif image.size != (width, height):
            image = image.resize((width, height), resample)
        return np.asarray(image, dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (..., H, W, 3) RGB -> float32 model input."""
        x = pixels.astype(np.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        scale, shift = self.scale_shift
        return x * scale + shift

    def prepare(self, image: "str | Path | Image.Image | np.ndarray") -> np.ndarray:
        """One image (path, PIL image or HxWx3/HxW uint8 array) -> float32 HxWx3 model input."""
        return self.normalize(self.resize_and_crop(to_pil(image)))


def open_image(path: str | Path) -> Image.Image:
    """Decode a file into an RGB image, or raise ``ImageDecodeError`` saying why not."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            kind = image.format
            if kind not in ACCEPTED_FORMATS:
                raise ImageDecodeError(f"{path}: {kind or 'unknown'} images are not supported "
                                       f"(use {', '.join(ACCEPTED_FORMATS)})")
            image.load()
            return image.convert("RGB")
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{path}: cannot decode image ({exc.__class__.__name__}: {exc})") from None


def to_pil(image: "str | Path | Image.Image | np.ndarray") -> Image.Image:
    """Accept a path, a PIL image (any mode) or a uint8 array (HxW, HxWx1, HxWx3, HxWx4)."""
    if isinstance(image, (str, Path)):
        return open_image(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            if np.issubdtype(array.dtype, np.floating) and array.size and array.max() <= 1.0:
                array = array * 255.0
            array = np.clip(array, 0, 255).astype(np.uint8)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim == 2:
            return Image.fromarray(array, "L").convert("RGB")
        if array.ndim == 3 and array.shape[-1] in (3, 4):
            return Image.fromarray(array, "RGBA" if array.shape[-1] == 4 else "RGB").convert("RGB")
        raise ImageDecodeError(f"expected an HxW, HxWx3 or HxWx4 uint8 array, got shape {array.shape}")
    raise ImageDecodeError(f"cannot read an image from {type(image).__name__}")
