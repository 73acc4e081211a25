"""Preprocessing recipes as data, replayed with numpy + Pillow only.

Every backbone records how its input is made (resize, crop, normalisation) as a ``Preprocessing``
value. Training, evaluation, export calibration, the bench and the device runtime all call
``open_image``/``prepare`` so an artifact sees exactly the pixels its reference model saw.
This module must never import TensorFlow: the runtime embeds it.

Decoding a file into RGB uint8 is one function, ``open_image`` (``decode_pixels`` for images already
in memory), under ``DecodeRules`` that the recipe records (``preprocessing.decode`` in ``edgetl.json``
and every sidecar) so a device app can do the same:

* pixel cap (``max_pixels``, default 40 megapixels): checked on the header before any pixel is
  decoded. A JPEG over it is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (DCT scaling,
  ``Image.draft``) until it fits; any other file over it is refused (``ImageDecodeError``), as is
  anything Pillow itself calls a decompression bomb (``Image.MAX_IMAGE_PIXELS``).
* EXIF orientation applied (``exif_transpose``), as a phone's gallery shows the photo.
* 16-bit greyscale (Pillow modes I;16, I;16B, I;16L, I) reduced to 8 bits by its high byte
  (``high_bit_depth: "high_byte"``, v >> 8), the way Pillow already reduces 16-bit colour PNGs.
* alpha (RGBA, LA, PA, P or L/RGB with a transparency key) composited over ``alpha_background``
  (white by default): Pillow's ``paste`` with the alpha band as mask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Sequence, Union

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import UsageError

# GIF (animated frames), TIFF and friends decode differently across libraries; training, export and
# runtime agree only on these.
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
INTERPOLATIONS = tuple(_RESAMPLE)  # what a recipe's ``interpolation`` may name

# 40 MP: a 48/50 MP phone photo (JPEG) still decodes, at half size; a PNG whose header claims
# 30000x30000 is refused before any memory is spent. A decode within the cap peaks at about 4 bytes
# per pixel for RGB and 8 for RGBA (a 39 MP PNG: 157 / 299 MB).
DEFAULT_MAX_PIXELS = 40_000_000
HIGH_BIT_DEPTH_RULES = ("high_byte",)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

ImageSource = Union[str, Path, bytes, IO[bytes]]


class ImageDecodeError(ValueError):
    """The file is not an image the pipeline takes (corrupt, truncated, too large, or an unsupported kind)."""


@dataclass(frozen=True)
class DecodeRules:
    """How an image file becomes RGB uint8 pixels before the recipe resizes it (see the module doc)."""

    exif_transpose: bool = True
    alpha_background: tuple[int, int, int] = (255, 255, 255)
    high_bit_depth: str = "high_byte"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        background = tuple(self.alpha_background)
        if len(background) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in background):
            raise UsageError(f"decode rule alpha_background must be 3 integers in 0..255, "
                             f"got {self.alpha_background!r}")
        object.__setattr__(self, "alpha_background", background)
        if self.high_bit_depth not in HIGH_BIT_DEPTH_RULES:
            raise UsageError(f"decode rule high_bit_depth must be one of {', '.join(HIGH_BIT_DEPTH_RULES)}, "
                             f"got {self.high_bit_depth!r}")
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise UsageError(f"decode rule max_pixels must be a positive integer, got {self.max_pixels!r}")
        if not isinstance(self.exif_transpose, bool):
            raise UsageError(f"decode rule exif_transpose must be true or false, got {self.exif_transpose!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "alpha_background": list(self.alpha_background)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "DecodeRules":
        """Rules from a recipe dict; absent (recipes written before the rules were recorded) = defaults."""
        if not isinstance(data, dict):
            if data is None:
                return cls()
            raise UsageError(f"preprocessing.decode must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Preprocessing:
    """How raw RGB uint8 pixels become the model's float input.

    Steps: resize so the shorter side is ``resize_shorter`` (``interpolation``), centre-crop to
    ``input_size`` (H, W), reorder channels to ``channel_order``, then ``(x - mean) / std`` per channel
    with ``x`` in 0..255 (mean/std given in the output channel order). ``decode``: how files become
    those RGB pixels in the first place (``DecodeRules``).
    """

    input_size: tuple[int, int] = (224, 224)
    resize_shorter: int | None = 256
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    channel_order: str = "RGB"
    layout: str = "NHWC"
    decode: DecodeRules = field(default_factory=DecodeRules)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "decode": self.decode.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("input_size", "mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        kwargs["decode"] = DecodeRules.from_dict(kwargs.get("decode"))
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
        if image.mode != "RGB":  # (an RGB image is only read here: no copy of a large photo)
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
        return self.normalize(self.resize_and_crop(to_pil(image, self.decode)))


def open_image(source: ImageSource, rules: DecodeRules | None = None) -> Image.Image:
    """Decode a file (path, bytes or binary stream) into an RGB image under ``rules`` (default
    ``DecodeRules()``), or raise ``ImageDecodeError`` saying why not. The one decode path of training,
    calibration, bench, predict and the service."""
    rules = rules or DecodeRules()
    if isinstance(source, (str, Path)):
        name = str(source)
        try:
            stream = open(source, "rb")
        except FileNotFoundError:
            raise ImageDecodeError(f"{name}: no such file") from None
        except OSError as exc:
            raise ImageDecodeError(f"{name}: cannot read ({exc.strerror or exc})") from None
    elif isinstance(source, (bytes, bytearray)):
        name, stream = "image", io.BytesIO(source)
    else:
        name, stream = "image", contextlib.nullcontext(source)  # the caller's stream stays open
    try:
        with stream as fp:
            # Pillow never closes a stream it was handed, so the loaded image outlives it.
            image = Image.open(fp)
            kind = image.format
            if kind not in ACCEPTED_FORMATS:
                raise ImageDecodeError(f"{name}: {kind or 'unknown'} images are not supported "
                                       f"(use {', '.join(ACCEPTED_FORMATS)})")
            _fit_pixel_cap(image, rules.max_pixels, name)
            image.load()
            return decode_pixels(image, rules, owned=True)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{name}: refused as a decompression bomb (Pillow: {exc})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: cannot decode image (not a JPEG, PNG, BMP or WEBP file)") from None
    except Exception as exc:  # hostile files reach plugin internals (struct.error, zlib.error, ...)
        raise ImageDecodeError(f"{name}: cannot decode image ({exc.__class__.__name__}: {exc})") from None


def _fit_pixel_cap(image: Image.Image, max_pixels: int, name: str) -> None:
    """Before decoding: a JPEG over the cap is set to decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
    scaling), the smallest reduction that fits; anything else over the cap is refused."""
    width, height = image.size
    if width * height <= max_pixels:
        return
    if image.format == "JPEG":
        for factor in (2, 4, 8):
            if -(-width // factor) * -(-height // factor) <= max_pixels:
                image.draft(None, (max(1, width // factor), max(1, height // factor)))
                if image.size[0] * image.size[1] <= max_pixels:
                    return
                break
    raise ImageDecodeError(f"{name}: {width}x{height} is {width * height:,} pixels, over the "
                           f"{max_pixels:,}-pixel cap (a decompression bomb, or raise max_pixels)")


def decode_pixels(image: Image.Image, rules: DecodeRules | None = None, owned: bool = False) -> Image.Image:
    """A PIL image of any mode -> RGB under ``rules``: pixel cap (images from ``Image.open`` not yet
    decoded), EXIF orientation, 16-bit to 8-bit, alpha composited on the background. ``owned``: the
    image may be changed in place (else a new image is returned when anything changes)."""
    rules = rules or DecodeRules()
    if getattr(image, "tile", None):  # from Image.open, not decoded yet: the cap applies as to a file
        _fit_pixel_cap(image, rules.max_pixels, getattr(image, "filename", "") or "image")
    if rules.exif_transpose and _orientation(image) != 1:
        image = ImageOps.exif_transpose(image, in_place=owned) or image
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _eight_bit_grey(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        # "over": background x (1 - alpha) + colour x alpha, pasted with the alpha band as the mask
        # (half the memory of alpha_composite, which needs two more RGBA copies).
        image = Image.new("RGB", rgba.size, rules.alpha_background)
        image.paste(rgba, (0, 0), rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def _orientation(image: Image.Image) -> int:
    """The EXIF Orientation tag (1 = upright); unreadable EXIF counts as upright, not as a bad image."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _eight_bit_grey(image: Image.Image) -> Image.Image:
    """16-bit greyscale (or 32-bit I holding 16-bit samples) -> L, or LA when a transparency key is set."""
    samples = np.asarray(image)
    if samples.dtype != np.uint16:  # big-endian I;16B, or int32 mode I
        samples = np.clip(samples, 0, 65535).astype(np.uint16)
    grey = Image.fromarray((samples >> 8).astype(np.uint8), "L")
    key = image.info.get("transparency")
    if isinstance(key, int):
        grey.putalpha(Image.fromarray(np.where(samples == key, 0, 255).astype(np.uint8), "L"))
    return grey


def to_pil(image: "str | Path | Image.Image | np.ndarray", rules: DecodeRules | None = None) -> Image.Image:
    """Accept a path, a PIL image (any mode) or an array (HxW, HxWx1, HxWx3, HxWx4; uint8, uint16 as
    16-bit samples, or floats in 0..1) and return RGB under ``rules`` (the same as a decoded file)."""
    if isinstance(image, (str, Path)):
        return open_image(image, rules)
    if isinstance(image, Image.Image):
        return decode_pixels(image, rules)
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype == np.uint16:
            array = (array >> 8).astype(np.uint8)  # the high_byte rule, as for 16-bit files
        elif array.dtype != np.uint8:
            if np.issubdtype(array.dtype, np.floating) and array.size and array.max() <= 1.0:
                array = array * 255.0
            array = np.clip(array, 0, 255).astype(np.uint8)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim == 2:
            return Image.fromarray(array, "L").convert("RGB")
        if array.ndim == 3 and array.shape[-1] in (3, 4):
            return decode_pixels(Image.fromarray(array, "RGBA" if array.shape[-1] == 4 else "RGB"), rules,
                                 owned=True)
        raise ImageDecodeError(f"expected an HxW, HxWx3 or HxWx4 uint8 array, got shape {array.shape}")
    raise ImageDecodeError(f"cannot read an image from {type(image).__name__}")
