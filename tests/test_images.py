"""Image loading: allowed formats by content, EXIF, transparency, limits and hostile input."""

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import reliability
from mmchat import images
from mmchat.errors import MMChatError
from mmchat.images import load_image, thumbnail, to_png_bytes

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def split_red_blue(width=40, height=20) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


def noise(size=(64, 64), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` × ``height`` and whose data is a few bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def close(pixel, expected, tol=12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected))


@pytest.mark.parametrize("fmt,options", [
    ("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {"lossless": True}), ("GIF", {}), ("BMP", {}),
])
def test_allowed_formats_decode_to_rgb_with_content(fmt, options, tmp_path):
    path = tmp_path / f"picture.{fmt.lower()}"
    path.write_bytes(encode(split_red_blue(), fmt, **options))
    for source in (path, str(path), path.read_bytes()):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (40, 20)
        assert close(image.getpixel((5, 10)), RED) and close(image.getpixel((35, 10)), BLUE)


def test_format_is_judged_by_content_not_extension(tmp_path):
    path = tmp_path / "really-a-jpeg.png"
    path.write_bytes(encode(split_red_blue(), "JPEG"))
    assert close(load_image(path).getpixel((5, 5)), RED)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE, (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    assert close(load_image(buffer.getvalue()).getpixel((4, 4)), RED)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    data = encode(split_red_blue(40, 20), "JPEG", quality=95, exif=exif.tobytes())
    image = load_image(data)
    assert image.size == (20, 40)  # portrait after rotation
    assert close(image.getpixel((10, 5)), RED) and close(image.getpixel((10, 35)), BLUE)


def test_transparency_is_composited_onto_white():
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 5, 10))
    rgba.paste((0, 0, 0, 128), (5, 0, 10, 10))
    image = load_image(encode(rgba, "PNG"))
    assert image.getpixel((2, 2)) == RED
    assert close(image.getpixel((7, 2)), (127, 127, 127), tol=1)  # half-transparent black on white

    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 255, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 1)
    image = load_image(encode(palette, "GIF", transparency=0))
    assert image.getpixel((0, 0)) == BLUE and image.getpixel((3, 3)) == WHITE


@pytest.mark.parametrize("mode,value,expected", [
    ("LA", (0, 128), (127, 127, 127)),
    ("L", 200, (200, 200, 200)),
    ("1", 1, WHITE),
    ("P", 0, (0, 0, 0)),
])
def test_other_modes_become_rgb(mode, value, expected):
    image = load_image(encode(Image.new(mode, (6, 6), value), "PNG"))
    assert image.mode == "RGB" and close(image.getpixel((3, 3)), expected, tol=1)


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert close(load_image(data).getpixel((4, 4)), RED)


def test_16_bit_grey_png_keeps_its_range():
    values = np.full((4, 4), 65_535, dtype=np.uint16)
    values[0, 0] = 32_896  # mid-grey in 16 bits
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image = load_image(data)
    assert image.getpixel((0, 0)) == (128, 128, 128) and image.getpixel((2, 2)) == WHITE


def test_missing_empty_and_folder_name_the_file(tmp_path):
    with pytest.raises(MMChatError, match="nope.png.*does not exist"):
        load_image(tmp_path / "nope.png")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(MMChatError, match="empty.jpg.*empty"):
        load_image(empty)
    with pytest.raises(MMChatError, match="folder"):
        load_image(tmp_path)


def test_text_named_png_is_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are my notes, not a picture\n")
    with pytest.raises(MMChatError, match=r"notes.png.*text file") as info:
        load_image(path)
    assert "PNG, JPEG" in str(info.value)


@pytest.mark.parametrize("data,what", [
    (encode(Image.new("RGB", (8, 8)), "TIFF"), "TIFF"),
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    (encode(Image.new("RGB", (8, 8)), "PPM"), "unknown format"),
    (encode(Image.new("RGB", (8, 8)), "ICO"), "ICO"),
])
def test_unsupported_formats_are_refused(data, what):
    with pytest.raises(MMChatError, match=what):
        load_image(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_truncated_files_are_refused(fmt, tmp_path):
    path = tmp_path / f"cut.{fmt.lower()}"
    data = encode(noise((96, 96)), fmt)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MMChatError, match="cut.*(damaged or truncated|not a supported)"):
        load_image(path)


@pytest.mark.parametrize("width,height", [(10_000, 10_000), (100_000, 100_000), (1, 65_000_000)])
def test_decompression_bombs_are_refused_before_decoding(width, height, recwarn):
    with pytest.raises(MMChatError, match="too large"):
        load_image(png_header_only(width, height))
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_real_bomb_png_is_refused():
    bomb = encode(Image.new("1", (9_000, 9_000)), "PNG")  # 81 M pixels in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(MMChatError, match="too large"):
        load_image(bomb)


def test_byte_limit(monkeypatch, tmp_path):
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 1_000)
    data = encode(noise((64, 64)), "PNG")
    path = tmp_path / "big.png"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(MMChatError, match="too large"):
            load_image(source)


def test_thumbnail_and_png_round_trip():
    image = split_red_blue(400, 100)
    small = thumbnail(image, max_side=64)
    assert small.size == (64, 16) and image.size == (400, 100)
    assert thumbnail(small, max_side=1000).size == (64, 16)  # never upscales
    with pytest.raises(ValueError):
        thumbnail(image, max_side=0)
    png = to_png_bytes(small)
    assert png.startswith(b"\x89PNG") and load_image(png).tobytes() == small.tobytes()


# --- property tests: hostile bytes give an RGB image or MMChatError, never anything else ---

def _assert_rgb_or_refused(data: bytes) -> None:
    try:
        image = load_image(data)
    except MMChatError:
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    image.tobytes()


@pytest.mark.reliability
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2_048))
def test_arbitrary_bytes(data):
    _assert_rgb_or_refused(data)
    reliability.count()


_SEEDS = {fmt: encode(noise((24, 16), seed=i), fmt) for i, fmt in enumerate(["PNG", "JPEG", "WEBP", "GIF", "BMP"])}


@pytest.mark.reliability
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(_SEEDS)), cut=st.integers(0, 10_000),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8))
def test_mutated_real_images(fmt, cut, edits):
    data = bytearray(_SEEDS[fmt])
    for position, value in edits:
        data[position % len(data)] = value
    _assert_rgb_or_refused(bytes(data[: max(1, len(data) - cut % len(data))]))
    reliability.count()


def test_concurrent_loads_leave_warning_filters_alone():
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    before = list(warnings.filters)
    payloads = [encode(split_red_blue(), fmt) for fmt in ("PNG", "JPEG", "BMP", "GIF")] * 4
    payloads += [png_header_only(20_000, 20_000)] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda data: _load_or_error(data), payloads))
    assert all(close(r.getpixel((5, 5)), RED) for r in results[:16])
    assert all(isinstance(r, MMChatError) for r in results[16:])
    assert warnings.filters == before


def _load_or_error(data):
    try:
        return load_image(data)
    except MMChatError as exc:
        return exc
