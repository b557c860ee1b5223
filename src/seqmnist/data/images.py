"""User images: safe decoding and MNIST-style preparation, and prediction with a trained run.

MNIST digits were made by fitting the ink into a 20 x 20 box, keeping its aspect ratio, and centring
that box by its centre of mass in a 28 x 28 field, white ink on black. ``prepare_image`` does the same
to a photo or drawing of any size, dark on light or light on dark.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from ..core.errors import ImageError
from ..core.fileio import read_regular_file

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
MAX_PIXELS = 16_000_000  # far below Pillow's default bomb limit (~89 MP)
MAX_BYTES = 20 * 1024 * 1024
# A picture of a digit is not a line: longer sides over this many times the shorter are refused
# from the header (a 16,000,000 x 1 PNG of 15 KB took 23 s and 1.2 GB to become an empty image).
MAX_ASPECT = 20
# Ink spanning less than this share of the image's longer side is a dot, not a digit (an MNIST
# digit spans about 70%; a single touch of the page's brush about 6%).
MIN_INK_EXTENT = 0.12


def decode_image(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode allow-listed image bytes to a float grayscale array in [0, 1] (first frame). The
    size is checked from the header, before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError(f"{name}: empty file")
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name}: {len(data):,} bytes is larger than the {MAX_BYTES:,} allowed")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"{name}: {w}x{h} pixels is more than the {max_pixels:,} allowed; "
                                 "a digit needs far fewer: resize the image")
            if w < 1 or h < 1:
                raise ImageError(f"{name}: image has no pixels")
            if max(w, h) > MAX_ASPECT * min(w, h) and max(w, h) > 64:
                raise ImageError(f"{name}: {w}x{h} pixels, {max(w, h) / min(w, h):,.0f} times "
                                 f"longer than wide: not a picture of a digit (at most "
                                 f"{MAX_ASPECT}:1); crop the image to the digit")
            img.seek(0)
            img.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a supported image (allowed: "
                         f"{', '.join(ALLOWED_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: refused as a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None
    return _to_gray(img)


def _to_gray(img) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max()
        return (arr / top if top > 0 else arr).astype(np.float32)
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if has_alpha:
        alpha = rgba[..., 3]
        if alpha.min() < 1.0:
            # Strokes drawn on a transparent canvas: the alpha is the ink. Put them on a background
            # that contrasts with their colour.
            ink = gray[alpha > 0.5]
            background = 1.0 if ink.size and ink.mean() < 0.5 else 0.0
            gray = gray * alpha + background * (1 - alpha)
    return gray.astype(np.float32)


def ink(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inked part of a white-on-black grayscale image in [0, 1] and the image scaled to its
    brightest ink; ImageError when there is no ink (a blank canvas) or only a dot."""
    peak = float(gray.max()) if gray.size else 0.0
    if peak < 0.1:
        raise ImageError("the image is blank: no ink found")
    gray = gray / peak
    rows = np.flatnonzero((gray > 0.2).any(axis=1))
    cols = np.flatnonzero((gray > 0.2).any(axis=0))
    crop = gray[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    extent = max(crop.shape) / max(gray.shape)
    if extent < MIN_INK_EXTENT and max(gray.shape) >= 2 / MIN_INK_EXTENT:
        raise ImageError(f"too little ink to be a digit: the ink spans {max(crop.shape)} of "
                         f"{max(gray.shape)} pixels, a dot rather than a digit; draw a digit "
                         "(or crop the image closer to it)")
    return crop, gray


def prepare_array(gray: np.ndarray, size: tuple[int, int] = (28, 28)) -> np.ndarray:
    """Grayscale [0, 1] array of any size -> uint8 ``size`` image, MNIST-style (white on black)."""
    from PIL import Image

    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2 or gray.size == 0:
        raise ImageError(f"expected a 2-D grayscale image, got shape {gray.shape}")
    def border_level(a: np.ndarray) -> float:
        return float(np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])))

    if border_level(gray) > 0.5:  # light background: invert so the ink is bright
        gray = 1.0 - gray
    gray = np.clip(gray - border_level(gray), 0.0, None)
    crop, gray = ink(gray)
    height, width = size
    box = max(1, round(min(height, width) * 20 / 28))
    scale = box / max(crop.shape)
    new_h = max(1, round(crop.shape[0] * scale))
    new_w = max(1, round(crop.shape[1] * scale))
    small = np.asarray(Image.fromarray(crop, mode="F").resize((new_w, new_h), Image.LANCZOS))
    small = np.clip(small, 0.0, 1.0)
    field = np.zeros(size, dtype=np.float32)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    field[top:top + new_h, left:left + new_w] = small
    if np.rint(field * 255).max() == 0:
        raise ImageError(f"the ink vanishes when the image is brought to {height} x {width}: "
                         "its strokes are too thin or faint for their size; crop the image "
                         "closer to the digit or draw thicker strokes")
    # Shift so that the centre of mass sits in the middle, as MNIST did.
    ys, xs = np.indices(field.shape)
    mass = field.sum()
    dy = int(round(height / 2 - (ys * field).sum() / mass))  # MNIST put it at pixel (14, 14)
    dx = int(round(width / 2 - (xs * field).sum() / mass))
    dy = int(np.clip(dy, -top, height - top - new_h))
    dx = int(np.clip(dx, -left, width - left - new_w))
    field = np.roll(field, (dy, dx), axis=(0, 1))
    return np.rint(field * 255).astype(np.uint8)


def prepare_image(source: str | Path | bytes, size: tuple[int, int] = (28, 28)) -> np.ndarray:
    """A file path or image bytes -> uint8 ``size`` array ready for a model."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        return prepare_array(decode_image(read_image_file(path), str(path)), size)
    return prepare_array(decode_image(bytes(source)), size)


def read_image_file(path: Path) -> bytes:
    """The bytes of a regular image file, at most MAX_BYTES of them; a FIFO or device is
    refused without being read (``fileio.read_regular_file``)."""

    return read_regular_file(path, MAX_BYTES, ImageError)


