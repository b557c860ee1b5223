"""User images: MNIST-style preparation, and every kind of bad file."""

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from seqmnist.core.errors import ImageError
from seqmnist.data.images import MAX_PIXELS, decode_image, prepare_array, prepare_image


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def correlation(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_round_trip_recovers_mnist_images(small_mnist):
    """An upscaled MNIST test digit, prepared again, matches the original (mean r=0.96 measured)."""
    scores = []
    for img in small_mnist.x_test[:100]:
        big = Image.fromarray(img).resize((112, 112), Image.BILINEAR)
        scores.append(correlation(prepare_image(encode(big)), img))
    assert np.mean(scores) > 0.9


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP"])
def test_dark_on_light_any_size_any_format(small_mnist, fmt):
    img = small_mnist.x_test[0]
    photo = Image.fromarray(255 - img).resize((300, 200), Image.BILINEAR).convert("RGB")
    out = prepare_image(encode(photo, fmt))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out[0].max() == 0 and out[:, 0].max() == 0  # background black, ink white
    assert out.max() > 200


def test_ink_fits_20_by_20_and_is_centred():
    canvas = np.zeros((400, 100), dtype=np.float32)
    canvas[50:350, 40:60] = 1.0  # a tall bar: height scales to 20, aspect kept
    out = prepare_array(canvas)
    rows = np.flatnonzero(out.max(axis=1) > 0)
    cols = np.flatnonzero(out.max(axis=0) > 0)
    assert 19 <= len(rows) <= 21 and len(cols) <= 4
    ys, xs = np.indices(out.shape)
    assert abs((ys * out).sum() / out.sum() - 14) <= 1 and abs((xs * out).sum() / out.sum() - 14) <= 1


def test_modes_rgba_palette_16bit_and_tiny():
    ink = np.zeros((60, 60), dtype=np.uint8)
    ink[10:50, 25:35] = 255
    rgba = np.zeros((60, 60, 4), dtype=np.uint8)
    rgba[..., 3] = ink  # black strokes on a transparent canvas (as a browser canvas exports)
    assert prepare_image(encode(Image.fromarray(rgba, "RGBA"))).max() > 200
    palette = Image.fromarray(ink).convert("P")
    assert prepare_image(encode(palette)).max() > 200
    sixteen = Image.fromarray(ink.astype(np.uint16) * 257)
    assert prepare_image(encode(sixteen)).max() > 200
    one = Image.new("L", (1, 1), 255)
    with pytest.raises(ImageError, match="blank"):
        prepare_image(encode(one))


@pytest.mark.parametrize("data, message", [
    (b"", "empty file"),
    (b"hello, I am text with a .png name\n", "not a supported image"),
    (b"%PDF-1.4\n" + b"0" * 100, "not a supported image"),
])
def test_not_images(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data, "upload.png")


def test_truncated_png_and_jpeg():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    for fmt in ("PNG", "JPEG"):
        data = encode(img, fmt)
        with pytest.raises(ImageError, match="corrupt or truncated"):
            decode_image(data[: len(data) // 2], f"x.{fmt}")


def test_tiff_is_not_allowed():
    with pytest.raises(ImageError, match="not a supported image"):
        decode_image(encode(Image.new("L", (8, 8)), "TIFF"))


def test_huge_dimensions_refused_before_decoding():
    side = int(MAX_PIXELS ** 0.5) + 100
    bomb = encode(Image.new("1", (side, side)))  # a few KB that would decode to >16 MP
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="pixels is more than"):
        decode_image(bomb)


def test_png_decompression_bomb_header():
    """A hand-made PNG whose header claims 100,000 x 100,000 pixels."""
    def chunk(kind, body):
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))
    ihdr = (100_000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    with pytest.raises(ImageError, match="pixels is more than|bomb"):
        decode_image(data + chunk(b"IEND", b""))


def test_gif_uses_first_frame():
    first = Image.new("L", (40, 40), 255)
    first.paste(0, (15, 5, 25, 35))
    second = Image.new("L", (40, 40), 255)
    data = io.BytesIO()
    first.save(data, "GIF", save_all=True, append_images=[second])
    assert prepare_image(data.getvalue()).max() > 200  # the second (blank) frame would raise


def test_only_regular_files_are_read_and_only_up_to_the_cap(tmp_path):
    """A link to /dev/zero would be read until memory runs out, a FIFO would hang: both are
    refused at once, without reading."""
    import os
    import threading

    from seqmnist.data.images import prepare_image

    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    done = {}

    def attempt():
        for path in (zero, fifo):
            try:
                prepare_image(path)
            except ImageError as exc:
                done[path] = str(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "reading a FIFO hung"
    assert "not a regular file" in done[zero] and "not a regular file" in done[fifo]


def test_a_line_of_pixels_is_refused_from_its_header():
    """16,000,000 x 1 pixels in a PNG of a few KB: within the pixel limit, but no picture of a
    digit; it used to take 23 s and 1.2 GB to become an all-zero 28 x 28."""
    line = encode(Image.new("L", (16_000_000, 1), 255))
    assert len(line) < 100_000
    with pytest.raises(ImageError, match=r"16000000x1 pixels, 16,000,000 times longer than wide"):
        decode_image(line)
    assert decode_image(encode(Image.new("L", (40, 400), 255))).shape == (400, 40)  # 10:1 is fine


def test_ink_that_vanishes_when_shrunk_is_said_not_explained():
    """A one-pixel diagonal across 16,000 x 800 pixels shrinks to nothing at 28 x 28: an error
    naming that, not an all-zero image given to the models."""
    from seqmnist.data.images import prepare_array

    gray = np.zeros((800, 16_000), dtype=np.float32)
    xs = np.arange(16_000)
    gray[xs * 800 // 16_000, xs] = 1.0
    with pytest.raises(ImageError, match="the ink vanishes"):
        prepare_array(gray)
