"""Rebuild the embedded sample (edgetl/samples/hymenoptera) from the full ant/bee training photos.

Every usable photo of ../shared/data/hymenoptera/train (GIFs and undecodable files skipped, as
``edgetl.data.scan_folder`` does) is resized so its shorter side is 256 px (bicubic; the default
backbones crop 224 from 256) and re-encoded as JPEG quality 85 without EXIF, under its own name with
a .jpg suffix. Pixels keep their stored orientation, like edgetl's own decoder reads them.

    python tools/make_sample.py [SOURCE] [--out edgetl/samples/hymenoptera]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

from edgetl.data import scan_folder

SHORTER_SIDE = 256
QUALITY = 85


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", nargs="?", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/data/hymenoptera/train")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "edgetl/samples/hymenoptera")
    args = parser.parse_args()
    images = scan_folder(args.source)
    staged = args.out.with_name(args.out.name + ".new")
    shutil.rmtree(staged, ignore_errors=True)
    for path, label in zip(images.paths, images.labels):
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = SHORTER_SIDE / min(image.size)
            if scale < 1:
                image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
            target = staged / images.classes[label] / (path.stem + ".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target, "JPEG", quality=QUALITY, optimize=True)
    if args.out.exists():
        shutil.rmtree(args.out)
    staged.rename(args.out)
    print(f"{len(images)} photos -> {args.out} (skipped {len(images.skipped)})")


if __name__ == "__main__":
    main()
