#!/usr/bin/env python3
"""Builds whole-slide images (tiled, pyramidal TIFF with a scale, which OpenSlide reads as
"generic-tiff") from IDC patches, for `runtime slide`'s tests and benchmark.

  make_slide.py patches DIR OUT.tif [--upscale K] [--margin TILES]
      Every 50x50 patch under DIR named <patient>_idx5_x<X>_y<Y>_class<C>.png goes at (X-1, Y-1)
      on a white canvas (the Kaggle coordinates are 1-based: x, y = 50k + 1), each pixel
      repeated K x K; level 0 is then 4 / K µm a pixel (the Kaggle patches' 4 µm over K), with
      levels at downsample 4, 16, ... . Edge crops (smaller than 50x50) are left out.
  make_slide.py grid OUT.tif --tiles N --patches DIR [--png-out DIR2]
      N tissue tiles on a square grid (every fifth place left white), cycling through
      the patches under DIR; with --png-out the same tiles are also written as PNG files named
      by their place, so `runtime eval` can classify the very same pixels (the benchmark).
  make_slide.py blank OUT.tif --width W --height H
      A white slide (no tissue).
Every command takes --mpp M (write this scale instead; --mpp-y M2 another one down the slide),
--no-scale (write none) or --aperio-mpp TEXT (none in the TIFF's resolution: an Aperio
description whose MPP field is TEXT, which OpenSlide gives as openslide.mpp-x/-y whatever it
says, 0 or inf too).

Needs numpy, pillow and tifffile (`make venv`).
"""
import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

PATCH = 50
KAGGLE_MPP = 4.0
NAME = re.compile(r"^(?P<patient>.+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<c>[01])\.png$")


def patches(root):
    """(x, y, path) of every named 50x50 patch under root, sorted by path."""
    out = []
    for p in sorted(Path(root).rglob("*.png")):
        m = NAME.match(p.name)
        if m is None:
            continue
        with Image.open(p) as im:
            if im.size != (PATCH, PATCH):
                continue
        out.append((int(m["x"]) - 1, int(m["y"]) - 1, p))
    if not out:
        sys.exit(f"no 50x50 patches named <patient>_idx5_x<X>_y<Y>_class<C>.png under {root}")
    return out


def write_pyramid(path, level0, mpp, args):
    """A tiled TIFF: level 0 then reduced levels (4x each, mean of blocks) down to ~512 px."""
    mpp = args.mpp or mpp
    opts = dict(tile=(256, 256), photometric="rgb", compression="zlib")

    def scale(down):
        if args.no_scale or args.aperio_mpp is not None:
            return {}
        mpp_y = args.mpp_y or mpp
        return dict(resolution=(1e4 / (mpp * down), 1e4 / (mpp_y * down)), resolutionunit="CENTIMETER")

    first = {}
    if args.aperio_mpp is not None:
        # OpenSlide takes a TIFF for Aperio's by its first description; tifffile's own (JSON)
        # would stand in its place.
        h, w = level0.shape[:2]
        first = dict(description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] (256x256) "
                                 f"RAW|AppMag = 40|MPP = {args.aperio_mpp}", metadata=None)
    tmp = Path(str(path) + ".tmp")
    with tifffile.TiffWriter(tmp, bigtiff=level0.nbytes > 2**31) as tw:
        tw.write(level0, **scale(1), **first, **opts)
        img, down = level0, 1
        while max(img.shape[:2]) > 512 and min(img.shape[:2]) >= 8:
            h, w = (img.shape[0] // 4) * 4, (img.shape[1] // 4) * 4
            img = img[:h, :w].reshape(h // 4, 4, w // 4, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8)
            down *= 4
            tw.write(img, subfiletype=1, **scale(down), **opts)
    tmp.replace(path)


def from_patches(args):
    found = patches(args.dir)
    k, margin = args.upscale, args.margin * PATCH
    width = max(x for x, _, _ in found) + PATCH + margin
    height = max(y for _, y, _ in found) + PATCH + margin
    canvas = np.full((height * k, width * k, 3), 255, np.uint8)
    for x, y, p in found:
        px = np.asarray(Image.open(p).convert("RGB"))
        if k > 1:
            px = px.repeat(k, axis=0).repeat(k, axis=1)
        canvas[y * k:(y + PATCH) * k, x * k:(x + PATCH) * k] = px
    write_pyramid(args.out, canvas, KAGGLE_MPP / k, args)
    print(f"{args.out}: {len(found)} patches, {canvas.shape[1]} x {canvas.shape[0]} px at {KAGGLE_MPP / k} µm/px")


def grid(args):
    found = patches(args.patches)
    places = args.tiles + args.tiles // 4  # every fifth place left white
    cols = math.ceil(math.sqrt(places))
    canvas = np.full((cols * PATCH, cols * PATCH, 3), 255, np.uint8)
    out = Path(args.png_out) if args.png_out else None
    for i in range(args.tiles):
        r, c = divmod(i + i // 4, cols)
        src = found[i % len(found)][2]
        px = np.asarray(Image.open(src).convert("RGB"))
        canvas[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = px
        if out is not None:
            d = out / "slide" / "0"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(px).save(d / f"slide_idx5_x{c * PATCH + 1}_y{r * PATCH + 1}_class0.png")
    write_pyramid(args.out, canvas, KAGGLE_MPP, args)
    print(f"{args.out}: {args.tiles} tissue tiles on a {cols} x {cols} grid")


def blank(args):
    write_pyramid(args.out, np.full((args.height, args.width, 3), 255, np.uint8), KAGGLE_MPP, args)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("patches")
    p.add_argument("dir")
    p.add_argument("out")
    p.add_argument("--upscale", type=int, default=1)
    p.add_argument("--margin", type=int, default=2, help="white tiles right and below")
    p.set_defaults(run=from_patches)
    g = sub.add_parser("grid")
    g.add_argument("out")
    g.add_argument("--tiles", type=int, required=True)
    g.add_argument("--patches", required=True)
    g.add_argument("--png-out")
    g.set_defaults(run=grid)
    b = sub.add_parser("blank")
    b.add_argument("out")
    b.add_argument("--width", type=int, required=True)
    b.add_argument("--height", type=int, required=True)
    b.set_defaults(run=blank)
    for each in (p, g, b):
        each.add_argument("--mpp", type=float, help="write this level-0 scale (µm/px) instead")
        each.add_argument("--mpp-y", type=float, help="a different scale down the slide (non-square pixels)")
        each.add_argument("--no-scale", action="store_true", help="write no scale")
        each.add_argument("--aperio-mpp", metavar="TEXT", help="the scale as an Aperio description's MPP field")
    args = ap.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
