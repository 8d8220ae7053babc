"""Bad and unusual image inputs on the cached image-folder path: bit depths, modes, links, sizes, broken files."""

from __future__ import annotations

import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relssl.data import DataError, load_split
from relssl.errors import RelsslWarning


def _permission_bits_apply() -> bool:
    """False for root (or CAP_DAC_OVERRIDE), which reads files whatever their permission bits."""
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_bytes(b"x")
        probe.chmod(0)
        try:
            probe.read_bytes()
        except PermissionError:
            return True
        return False


PERMISSIONS_APPLY = _permission_bits_apply()


def load(root: Path, split: str = "all", **kw):
    return load_split("imagefolder", split, root, download=False, progress=False, **kw)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png16(path: Path, pixels: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG written by hand (PIL writes 16-bit only for grayscale): 0 gray, 2 RGB, 4 gray+alpha, 6 RGBA."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows))
                     + png_chunk(b"IEND", b""))


GRADIENT = (np.arange(8 * 8, dtype=np.uint32).reshape(8, 8) * 1040).astype(np.uint16)  # 0 .. 65520


# --- bit depth and colour modes -------------------------------------------------------------------------------


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    Image.fromarray(GRADIENT).save(tmp_path / "g.png")  # PIL writes mode I;16 as a 16-bit grayscale PNG
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    data = load(tmp_path)
    expected = np.repeat((GRADIENT >> 8).astype(np.uint8)[..., None], 3, axis=-1)  # the high byte
    np.testing.assert_array_equal(data.images[0], expected)


def test_16_bit_png_on_the_streaming_path_is_scaled_like_the_cache(tmp_path: Path) -> None:
    from relssl.data.stream import decode_rgb

    Image.fromarray(GRADIENT).save(tmp_path / "g.png")
    streamed = np.asarray(decode_rgb(str(tmp_path / "g.png")))
    np.testing.assert_array_equal(streamed, np.repeat((GRADIENT >> 8).astype(np.uint8)[..., None], 3, axis=-1))
    np.testing.assert_array_equal(streamed, load(tmp_path).images[0])


def test_16_bit_big_endian_and_32_bit_int_modes(tmp_path: Path) -> None:
    from relssl.data.decode import to_rgb

    big = Image.frombytes("I;16B", (8, 8), GRADIENT.astype(">u2").tobytes())
    wide = Image.fromarray(GRADIENT.astype(np.int32))  # mode I, as 16-bit PPM files open
    assert (big.mode, wide.mode) == ("I;16B", "I")
    expected = np.repeat((GRADIENT >> 8).astype(np.uint8)[..., None], 3, axis=-1)
    np.testing.assert_array_equal(np.asarray(to_rgb(big, "big")), expected)
    np.testing.assert_array_equal(np.asarray(to_rgb(wide, "wide")), expected)
    clipped = Image.fromarray(np.array([[-5, 70000]], np.int32))
    assert np.asarray(to_rgb(clipped, "c"))[0, :, 0].tolist() == [0, 255]  # mode I outside 0..65535 is clipped


def test_16_bit_ppm_and_16_bit_colour_pngs(tmp_path: Path) -> None:
    (tmp_path / "p5.ppm").write_bytes(b"P5 8 8 65535\n" + GRADIENT.astype(">u2").tobytes())
    write_png16(tmp_path / "q_gray_alpha.png", np.stack([GRADIENT, np.full_like(GRADIENT, 65535)], -1), 4)
    write_png16(tmp_path / "r_rgb.png", np.stack([GRADIENT] * 3, -1), 2)
    write_png16(tmp_path / "s_rgba.png", np.stack([GRADIENT] * 3 + [np.full_like(GRADIENT, 65535)], -1), 6)
    data = load(tmp_path)
    expected = np.repeat((GRADIENT >> 8).astype(np.uint8)[..., None], 3, axis=-1)
    for i in range(4):
        np.testing.assert_array_equal(data.images[i], expected, err_msg=f"image {i}")


def test_float_image_is_refused_with_its_name(tmp_path: Path) -> None:
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "float.png", "TIFF")  # a mode F TIFF under an image extension
    with pytest.raises(DataError, match=r"float\.png.*floating-point"):
        load(tmp_path)


def test_palette_cmyk_bilevel_and_gray_alpha_modes(tmp_path: Path) -> None:
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "a_palette.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "b_cmyk.jpg", quality=100)
    Image.new("1", (8, 8), 1).save(tmp_path / "c_bilevel.png")
    Image.new("LA", (8, 8), (120, 7)).save(tmp_path / "d_gray_alpha.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL warning leaks out either
        data = load(tmp_path)
    assert data.images[0, 0, 0].tolist() == [10, 20, 30]
    red = data.images[1, 4, 4].tolist()
    assert red[0] > 240 and red[1] < 15 and red[2] < 15  # CMYK (0, 255, 255, 0) is red
    assert data.images[2, 0, 0].tolist() == [255, 255, 255]
    assert data.images[3, 0, 0].tolist() == [120, 120, 120]


# --- broken files ---------------------------------------------------------------------------------------------


def test_truncated_png_is_named(tmp_path: Path, png) -> None:
    for i in range(3):
        png(tmp_path / f"{i}.png", i, size=(32, 32))
    noisy = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "1.png")
    whole = (tmp_path / "1.png").read_bytes()
    (tmp_path / "1.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cannot read image .*1\.png.*Remove or replace"):
        load(tmp_path)


@pytest.mark.parametrize("content", [b"", b"just some text, not an image\n"], ids=["empty", "text"])
def test_non_image_under_an_image_extension_is_named(tmp_path: Path, png, content: bytes) -> None:
    png(tmp_path / "a.png", 1)
    (tmp_path / "b.jpg").write_bytes(content)
    with pytest.raises(DataError, match=r"b\.jpg"):
        load(tmp_path)


def test_decompression_bomb_header_is_named_without_decoding(tmp_path: Path, png) -> None:
    png(tmp_path / "a.png", 1)
    header = struct.pack(">IIBBBBB", 40_000, 40_000, 8, 2, 0, 0, 0)  # 1.6e9 pixels, no pixel data
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b""))
    with pytest.raises(DataError, match=r"bomb\.png"):
        load(tmp_path)


@pytest.mark.skipif(not PERMISSIONS_APPLY, reason="running as root: files are readable whatever their permission bits")
def test_unreadable_file_is_named(tmp_path: Path, png) -> None:
    png(tmp_path / "a.png", 1)
    png(tmp_path / "b.png", 2)
    (tmp_path / "b.png").chmod(0)
    try:
        with pytest.raises(DataError, match=r"b\.png"):
            load(tmp_path)
    finally:
        (tmp_path / "b.png").chmod(0o644)


def test_unlistable_folder_is_named(tmp_path: Path, png, monkeypatch: pytest.MonkeyPatch) -> None:
    png(tmp_path / "a" / "x.png", 1)
    png(tmp_path / "b" / "locked" / "y.png", 2)
    locked = str(tmp_path / "b" / "locked")
    real_scandir = os.scandir

    def scandir(path="."):  # what chmod 000 does to a folder for a user other than root
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"cannot list folder .*locked.*Permission denied"):
        load(tmp_path)


@pytest.mark.skipif(not PERMISSIONS_APPLY, reason="running as root: folders are listable whatever their permission bits")
def test_unreadable_folder_is_named(tmp_path: Path, png) -> None:
    png(tmp_path / "a" / "x.png", 1)
    png(tmp_path / "b" / "locked" / "y.png", 2)
    (tmp_path / "b" / "locked").chmod(0)
    try:
        with pytest.raises(DataError, match=r"cannot list folder .*locked"):
            load(tmp_path)
    finally:
        (tmp_path / "b" / "locked").chmod(0o755)


def test_decode_array_too_big_for_memory_is_a_data_error(tmp_path: Path, png) -> None:
    from relssl.data.decode import decode_images

    png(tmp_path / "a.png", 1)
    with pytest.raises(DataError, match="image_size"):
        decode_images([tmp_path / "a.png"] * 4, (1 << 20, 1 << 20), progress=False)


# --- symbolic links -------------------------------------------------------------------------------------------


def test_link_to_an_ancestor_folder_does_not_duplicate_or_mislabel(tmp_path: Path, png) -> None:
    root = tmp_path / "root"
    for c, n in (("a", 2), ("b", 1)):
        for i in range(n):
            png(root / c / f"{i}.png", 10 * (c == "b") + i)
    os.symlink(root, root / "a" / "up")  # a/up -> the root: a/up/b/0.png would be b's image listed under a
    os.symlink("../..", root / "b" / "top")  # b/top -> the root's parent, relative
    data = load(root)
    assert data.classes == ("a", "b") and data.labels.tolist() == [0, 0, 1]
    assert data.images[:, 0, 0, 0].tolist() == [0, 1, 10]


def test_link_in_one_class_to_a_file_or_folder_of_another_is_not_counted_twice(tmp_path: Path, png) -> None:
    root = tmp_path / "root"
    png(root / "a" / "0.png", 1)
    png(root / "b" / "0.png", 2)
    png(root / "b" / "sub" / "1.png", 3)
    os.symlink(root / "b" / "0.png", root / "a" / "also.png")  # b's image, linked from a
    os.symlink(root / "b" / "sub", root / "a" / "sub_of_b")  # b's folder, linked from a
    data = load(root)
    assert data.labels.tolist() == [0, 1, 1] and data.images[:, 0, 0, 0].tolist() == [1, 2, 3]


def test_link_out_of_the_root_is_followed_once(tmp_path: Path, png) -> None:
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    png(root / "a" / "0.png", 1)
    png(outside / "5.png", 5)
    png(tmp_path / "other" / "7.png", 7)
    os.symlink(outside, root / "b")  # a whole class folder kept on another disk: the usual reason for links
    os.symlink(outside, root / "b_again")  # the same folder again: its files are already listed under b
    os.symlink(tmp_path / "other" / "7.png", root / "a" / "7.png")
    data = load(root)
    assert data.classes == ("a", "b", "b_again")
    assert data.labels.tolist() == [0, 0, 1] and data.images[:, 0, 0, 0].tolist() == [1, 7, 5]


def test_link_to_a_sibling_split_does_not_leak_test_images_into_train(tmp_path: Path, png) -> None:
    png(tmp_path / "train" / "a" / "0.png", 1)
    png(tmp_path / "test" / "a" / "0.png", 2)
    os.symlink(tmp_path / "test" / "a", tmp_path / "train" / "a" / "from_test")
    os.symlink("../..", tmp_path / "train" / "a" / "up")
    assert load(tmp_path, "train").images[:, 0, 0, 0].tolist() == [1]
    assert load(tmp_path, "all").images[:, 0, 0, 0].tolist() == [1, 2]  # train/ then test/


def test_symlink_loops_and_broken_links_are_skipped(tmp_path: Path, png) -> None:
    png(tmp_path / "a" / "0.png", 1)
    os.symlink("loop", tmp_path / "a" / "loop")  # points at itself: ELOOP
    os.symlink("loop.png", tmp_path / "a" / "loop.png")
    os.symlink(tmp_path / "missing", tmp_path / "a" / "gone.png")
    os.mkdir(tmp_path / "a" / "x")
    os.symlink(tmp_path / "a" / "y", tmp_path / "a" / "x" / "to_y")
    os.mkdir(tmp_path / "a" / "y")
    os.symlink(tmp_path / "a" / "x", tmp_path / "a" / "y" / "to_x")  # x -> y -> x
    assert len(load(tmp_path)) == 1


# --- sizes ----------------------------------------------------------------------------------------------------


def test_majority_size_wins_over_a_stray_first_thumbnail(tmp_path: Path, png) -> None:
    png(tmp_path / "a" / "000_thumb.png", 50, size=(4, 4))  # first in sorted order
    for i in range(1, 12):
        png(tmp_path / "a" / f"{i:03d}.png", i, size=(16, 16))
    with pytest.warns(RelsslWarning, match=r"1 of 12 images .*16x16.*000_thumb\.png.*data\.image_size"):
        data = load(tmp_path)
    assert data.images.shape == (12, 16, 16, 3)
    assert data.images[1:, 5, 5, 0].tolist() == list(range(1, 12)) and data.images[0, 5, 5, 0] == 50


def test_majority_size_is_shared_by_the_splits(tmp_path: Path, png) -> None:
    for i in range(5):
        png(tmp_path / "train" / "a" / f"{i}.png", i, size=(12, 10))
    png(tmp_path / "test" / "a" / "0.png", 9, size=(6, 6))  # the test split alone would say 6x6
    with pytest.warns(RelsslWarning, match="1 of 1 images"):
        test = load(tmp_path, "test")
    assert test.images.shape == (1, 12, 10, 3)
    assert load(tmp_path, "train").images.shape == (5, 12, 10, 3)


def test_majority_size_samples_big_folders(tmp_path: Path, png, monkeypatch: pytest.MonkeyPatch) -> None:
    from relssl.data import imagefolder

    monkeypatch.setattr(imagefolder, "SIZE_SAMPLE", 4)
    for i in range(10):
        png(tmp_path / f"{i}.png", i, size=(8, 8) if i % 3 else (6, 6))  # 0, 3, 6, 9 are 6x6
    opened: list[str] = []
    real = imagefolder.read_image_size
    monkeypatch.setattr(imagefolder, "read_image_size", lambda p: opened.append(os.fspath(p)) or real(p))
    with pytest.warns(RelsslWarning):
        data = load(tmp_path)
    assert len(opened) == 4 and data.images.shape[1:3] == (8, 8)


def test_declared_size_resizes_without_a_note(tmp_path: Path, png) -> None:
    png(tmp_path / "a.png", 1, size=(4, 4))
    png(tmp_path / "b.png", 2, size=(16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load(tmp_path, image_size=8).images.shape == (2, 8, 8, 3)
