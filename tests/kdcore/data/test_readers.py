"""Tests for kdcore.data.readers: .npz files, image folders and their archives, and the
limits and refusals that make untrusted uploads safe to read."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image

from kdcore.data import DataError, load_dataset

CIFAR_TEST = Path(__file__).resolve().parents[3].parent / "shared/data/cifar10/cifar10-test.zip"
CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

# ------------------------------------------------------------------------------ factories


def png_bytes(pixels: npt.NDArray[np.uint8]) -> bytes:
    """PNG of an (H, W) grayscale or (H, W, 3) RGB array."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def pixels(seed: int, h: int = 6, w: int = 8, gray: bool = False) -> npt.NDArray[np.uint8]:
    shape = (h, w) if gray else (h, w, 3)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def image_files(
    classes: tuple[str, ...] = ("cat", "airplane", "dog"),
    per_class: int = 3,
    root: str = "",
    gray: bool = False,
) -> tuple[dict[str, bytes], npt.NDArray[np.uint8], list[int]]:
    """Archive contents {path: bytes} plus the x (N, C, H, W) and y a loader should return."""
    files: dict[str, bytes] = {}
    expected: dict[str, tuple[npt.NDArray[np.uint8], int]] = {}
    for label, name in enumerate(sorted(classes)):
        for i in range(per_class):
            px = pixels(seed=100 * label + i, gray=gray)
            rel = f"{name}/{i:04d}.png"
            files[root + rel] = png_bytes(px)
            chw = px[None] if gray else px.transpose(2, 0, 1)
            expected[rel] = (chw, label)
    order = sorted(expected)
    x = np.stack([expected[k][0] for k in order])
    return files, x, [expected[k][1] for k in order]


def write_dir(root: Path, files: dict[str, bytes]) -> Path:
    for rel, blob in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
    return root


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, blob in files.items():
            zf.writestr(rel, blob)
    return path


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]
        for rel, blob in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


def write_npz(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


WRITERS: dict[str, Callable[[Path, dict[str, bytes]], Path]] = {
    "dir": lambda tmp, files: write_dir(tmp / "folder", files),
    "zip": lambda tmp, files: write_zip(tmp / "data.zip", files),
    "tar": lambda tmp, files: write_tar(tmp / "data.tar", files),
    "tar.gz": lambda tmp, files: write_tar(tmp / "data.tar.gz", files, "w:gz"),
    "tgz": lambda tmp, files: write_tar(tmp / "data.tgz", files, "w:gz"),
    "tar.bz2": lambda tmp, files: write_tar(tmp / "data.tar.bz2", files, "w:bz2"),
    "tar.xz": lambda tmp, files: write_tar(tmp / "data.tar.xz", files, "w:xz"),
}


# ------------------------------------------------------------------------------------ npz


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((6, 3, 5, 7), (3, 5, 7)),  # N, C, H, W
        ((6, 5, 7, 3), (3, 5, 7)),  # N, H, W, C
        ((6, 5, 7, 1), (1, 5, 7)),  # N, H, W, 1
        ((6, 5, 7), (1, 5, 7)),  # N, H, W grayscale
        ((6, 10), (10,)),  # vectors
    ],
)
def test_npz_layouts(tmp_path: Path, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    x = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    ds = load_dataset(write_npz(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2])))
    assert ds.input_shape == expected
    assert ds.x.shape == (6, *expected)
    assert ds.x.dtype == torch.uint8
    assert ds.x.is_contiguous()
    assert ds.y.dtype == torch.int64
    assert ds.classes == ["0", "1", "2"]
    assert ds.num_classes == 3
    assert len(ds) == 6
    if len(shape) == 4 and shape[-1] in (1, 3):
        # channels-last sample 0, pixel (0, 0) holds channel values in the last axis
        np.testing.assert_array_equal(ds.x[0, :, 0, 0].numpy(), x[0, 0, 0, :])


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.int64, np.uint16])
def test_npz_non_uint8_becomes_float32(tmp_path: Path, dtype: type) -> None:
    x: npt.NDArray[Any] = np.arange(24).reshape(4, 6).astype(dtype)
    ds = load_dataset(write_npz(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0, 1])))
    assert ds.x.dtype == torch.float32
    np.testing.assert_array_equal(ds.x.numpy(), x.astype(np.float32))


def test_npz_classes_and_num_classes(tmp_path: Path) -> None:
    path = write_npz(
        tmp_path / "d.npz",
        x=np.zeros((4, 2), np.float32),
        y=np.array([0, 1, 0, 1], np.int32),
        classes=np.array(["cat", "dog", "eel"]),
    )
    ds = load_dataset(path)
    assert ds.classes == ["cat", "dog", "eel"]
    assert ds.num_classes == 3  # a class may have no samples


def good_x() -> npt.NDArray[np.float32]:
    return np.zeros((4, 3), np.float32)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": good_x(), "y": np.array([0, 1, 2, 3]), "classes": np.array(["a", "b", "c"])},
         "label 3 is out of range; labels must be in [0, 3)"),
        ({"x": good_x(), "y": np.array([0, 1, -1, 1])}, "label -1 is out of range"),
        ({"x": good_x(), "y": np.array([0, 1, 0])}, "x has 4 samples but y has 3 labels"),
        ({"x": np.array([[0.0], [np.nan], [1.0], [2.0]]), "y": np.array([0, 1, 0, 1])}, "NaN"),
        ({"x": np.array([[0.0], [np.inf], [1.0], [2.0]]), "y": np.array([0, 1, 0, 1])},
         "infinite"),
        ({"x": np.array([[0.0], [1e300], [1.0], [2.0]]), "y": np.array([0, 1, 0, 1])},
         "float32's range"),
        ({"x": good_x(), "y": np.array([1, 1, 1, 1])}, "only 1 distinct class"),
        ({"x": good_x(), "y": np.array([0, 1, 0, 10**12])}, "at most 100000"),
        ({"x": good_x(), "labels": np.array([0, 1, 0, 1])},
         "missing array(s) y; found x, labels"),
        ({"x": good_x(), "y": np.array([0.0, 1.0, 0.0, 1.0])}, "integer class labels"),
        ({"x": good_x(), "y": np.array([[0], [1], [0], [1]])}, "y must be 1-D"),
        ({"x": np.zeros((0, 3), np.float32), "y": np.zeros(0, np.int64)}, "x is empty"),
        ({"x": np.array(["a", "b", "c", "d"]), "y": np.array([0, 1, 0, 1])}, "numeric"),
        ({"x": np.zeros(4), "y": np.array([0, 1, 0, 1])}, "expected (N, C, H, W)"),
        ({"x": good_x(), "y": np.array([0, 1, 0, 1]), "classes": np.array(["a", "a"])},
         "repeated: a"),
        # Saved pickled by np.savez; loading must refuse rather than unpickle.
        ({"x": good_x(), "y": np.array([0, 1, 0, 1]), "classes": np.array(["a", 1], object)},
         "never unpickled"),
    ],
)  # fmt: skip
def test_npz_invalid(tmp_path: Path, arrays: dict[str, object], message: str) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(write_npz(tmp_path / "bad.npz", **arrays))
    assert message in str(info.value)


def test_npz_header_size_checked_before_reading(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", x=np.zeros((100, 100), np.float32), y=np.arange(100))
    with pytest.raises(DataError, match="max_total_bytes"):
        load_dataset(path, max_total_bytes=10_000)


def test_max_samples(tmp_path: Path) -> None:
    npz = write_npz(tmp_path / "d.npz", x=np.zeros((5, 2), np.float32), y=np.arange(5) % 2)
    with pytest.raises(DataError, match="max_samples=4"):
        load_dataset(npz, max_samples=4)
    assert len(load_dataset(npz, max_samples=5)) == 5
    files, _, _ = image_files(per_class=2)
    with pytest.raises(DataError, match="max_samples=5"):
        load_dataset(write_zip(tmp_path / "d.zip", files), max_samples=5)


def test_unsupported_format_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("x,y\n")
    with pytest.raises(DataError, match=r"unsupported dataset format; supported: \.npz"):
        load_dataset(path)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing.npz")


def test_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="d.npz"):
        load_dataset(path)


# ---------------------------------------------------------------------------- image folders


@pytest.mark.parametrize("kind", list(WRITERS))
def test_image_folder_formats_agree(tmp_path: Path, kind: str) -> None:
    files, x, y = image_files()
    ds = load_dataset(WRITERS[kind](tmp_path, files))
    assert ds.classes == ["airplane", "cat", "dog"]
    assert ds.x.dtype == torch.uint8
    assert ds.x.shape == (9, 3, 6, 8)
    np.testing.assert_array_equal(ds.x.numpy(), x)
    assert ds.y.tolist() == y


@pytest.mark.parametrize("kind", list(WRITERS))
def test_common_root_folders_stripped(tmp_path: Path, kind: str) -> None:
    files, x, y = image_files(root="export/train/")
    ds = load_dataset(WRITERS[kind](tmp_path, files))
    assert ds.classes == ["airplane", "cat", "dog"]
    np.testing.assert_array_equal(ds.x.numpy(), x)
    assert ds.y.tolist() == y


def test_tar_made_with_dot_prefix(tmp_path: Path) -> None:
    files, x, _ = image_files()
    ds = load_dataset(write_tar(tmp_path / "d.tgz", {f"./{k}": v for k, v in files.items()}))
    np.testing.assert_array_equal(ds.x.numpy(), x)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_grayscale_gives_one_channel(tmp_path: Path, kind: str) -> None:
    files, x, _ = image_files(gray=True)
    ds = load_dataset(WRITERS[kind](tmp_path, files))
    assert ds.input_shape == (1, 6, 8)
    np.testing.assert_array_equal(ds.x.numpy(), x)


def test_mixed_gray_and_rgb_become_rgb(tmp_path: Path) -> None:
    gray = pixels(1, gray=True)
    rgb = pixels(2)
    files = {"a/0.png": png_bytes(gray), "b/0.png": png_bytes(rgb)}
    ds = load_dataset(write_zip(tmp_path / "d.zip", files))
    assert ds.input_shape == (3, 6, 8)
    np.testing.assert_array_equal(ds.x[0].numpy(), np.stack([gray] * 3))
    np.testing.assert_array_equal(ds.x[1].numpy(), rgb.transpose(2, 0, 1))


def test_other_modes_convert_to_rgb(tmp_path: Path) -> None:
    rgba = np.concatenate([pixels(1), np.full((6, 8, 1), 255, np.uint8)], axis=2)
    files = {"a/0.png": png_bytes(rgba), "b/0.jpg": _jpeg(pixels(2))}
    ds = load_dataset(write_zip(tmp_path / "d.zip", files))
    assert ds.input_shape == (3, 6, 8)
    np.testing.assert_array_equal(ds.x[0].numpy(), rgba[..., :3].transpose(2, 0, 1))


def _jpeg(px: npt.NDArray[np.uint8]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", list(WRITERS))
def test_non_images_and_metadata_ignored(tmp_path: Path, kind: str) -> None:
    files, x, _ = image_files(root="train/")
    files |= {
        "train/README.md": b"# about",
        "train/.DS_Store": b"\0\0",
        "train/cat/.hidden.png": b"not an image",
        "__MACOSX/train/cat/._0000.png": b"apple double",
        "train/cat/notes.txt": b"hello",
    }
    ds = load_dataset(WRITERS[kind](tmp_path, files))
    np.testing.assert_array_equal(ds.x.numpy(), x)


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
@pytest.mark.parametrize("name", ["../evil/x.png", "cat/../../evil.png", "/abs/cat/x.png"])
def test_escaping_member_names_refused(tmp_path: Path, kind: str, name: str) -> None:
    files, _, _ = image_files()
    files[name] = png_bytes(pixels(0))
    with pytest.raises(DataError, match="absolute path or '..'") as info:
        load_dataset(WRITERS[kind](tmp_path, files))
    assert repr(name) in str(info.value)


def test_symlinks_in_tar_are_skipped(tmp_path: Path) -> None:
    files, x, _ = image_files()
    path = write_tar(tmp_path / "d.tar", files)
    with tarfile.open(path, "a") as tf:
        for kind, target in [(tarfile.SYMTYPE, "/etc/passwd"), (tarfile.LNKTYPE, "cat/0000.png")]:
            info = tarfile.TarInfo(f"cat/link{kind!r}.png")
            info.type, info.linkname = kind, target
            tf.addfile(info)
    ds = load_dataset(path)
    np.testing.assert_array_equal(ds.x.numpy(), x)


def test_symlinks_in_zip_are_skipped(tmp_path: Path) -> None:
    files, x, _ = image_files()
    path = write_zip(tmp_path / "d.zip", files)
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("cat/zz-link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    ds = load_dataset(path)
    np.testing.assert_array_equal(ds.x.numpy(), x)


def test_symlinks_in_directory_are_skipped(tmp_path: Path) -> None:
    files, x, _ = image_files()
    root = write_dir(tmp_path / "folder", files)
    outside = write_dir(tmp_path / "outside", {"bird/0.png": png_bytes(pixels(9))})
    os.symlink(outside / "bird" / "0.png", root / "cat" / "zz-link.png")
    os.symlink(outside / "bird", root / "bird")
    ds = load_dataset(root)
    assert ds.classes == ["airplane", "cat", "dog"]
    np.testing.assert_array_equal(ds.x.numpy(), x)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_decompression_bomb_refused_without_reading_it(tmp_path: Path, kind: str) -> None:
    files, _, _ = image_files()
    if kind == "zip":
        path = write_zip(tmp_path / "bomb.zip", files)
        with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf, zf.open("a/x.png", "w") as fp:
            for _ in range(50):
                fp.write(bytes(2**20))  # 50 MiB of zeros, written without holding them
    else:
        path = write_tar(tmp_path / "bomb.tar.gz", {**files, "a/x.png": bytes(50 * 2**20)}, "w:gz")
    assert path.stat().st_size < 2**20  # compresses to almost nothing
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="max_total_bytes") as info:
            load_dataset(path, max_total_bytes=2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "decompression bomb" in str(info.value)
    assert peak < 8 * 2**20, f"loading the bomb allocated {peak} bytes"


def test_total_bytes_counts_many_small_members(tmp_path: Path) -> None:
    files, _, _ = image_files()
    total = sum(len(b) for b in files.values())
    for kind in ("dir", "zip", "tar"):
        path = WRITERS[kind](tmp_path, files)
        with pytest.raises(DataError, match="max_total_bytes"):
            load_dataset(path, max_total_bytes=total - 1)
        # Headers count too: a tar's 512-byte header and padding, a zip's directory entry.
        assert len(load_dataset(path, max_total_bytes=total + 1024 * len(files))) == 9


def empty_members(n: int) -> dict[str, bytes]:
    """``n`` empty files that are not images: ignored, but each one an archive entry."""
    return {f"junk/{i:07d}.txt": b"" for i in range(n)}


@pytest.mark.parametrize("kind", ["dir", "zip", "tar", "tar.gz"])
def test_member_count_is_limited_whatever_the_members_hold(tmp_path: Path, kind: str) -> None:
    files, _, _ = image_files()  # 9 images in 3 class folders
    path = WRITERS[kind](tmp_path, {**files, **empty_members(200)})
    with pytest.raises(DataError, match=r"more than max_members=100 entries") as info:
        load_dataset(path, max_members=100)
    assert "send many small samples as one .npz file" in str(info.value)
    assert len(load_dataset(path, max_members=300)) == 9


def test_a_tar_of_many_empty_members_is_refused_while_streaming(tmp_path: Path) -> None:
    # The archive, scaled down: a few images, then thousands of empty members, then
    # garbage. The limit must stop the scan before the garbage (not list every member first).
    files, _, _ = image_files()
    blob = bytearray(write_tar(tmp_path / "d.tar", {**files, **empty_members(5000)}).read_bytes())
    blob[512 * 3000 :] = b"\xff" * (len(blob) - 512 * 3000)
    (tmp_path / "bomb.tar").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="max_members=1000"):
        load_dataset(tmp_path / "bomb.tar", max_members=1000)
    with pytest.raises(DataError, match="truncated or corrupt"):  # read on: reaches the garbage
        load_dataset(tmp_path / "bomb.tar", max_members=10_000)


def test_tar_headers_count_against_total_bytes(tmp_path: Path) -> None:
    files, _, _ = image_files()
    images = sum(len(b) for b in files.values())
    path = write_tar(tmp_path / "d.tar.gz", {**files, **empty_members(2000)}, "w:gz")
    assert path.stat().st_size < 100_000  # a million bytes of headers compress to little
    with pytest.raises(DataError, match="max_total_bytes=200000") as info:
        load_dataset(path, max_total_bytes=200_000)
    assert "junk/" in str(info.value)  # reached among the empty members
    assert images + 2009 * 512 < 2_000_000
    assert len(load_dataset(path, max_total_bytes=2_000_000)) == 9


def test_a_zip_directory_is_counted_before_zipfile_reads_it(tmp_path: Path) -> None:
    files, _, _ = image_files()
    blob = bytearray(write_zip(tmp_path / "d.zip", {**files, **empty_members(500)}).read_bytes())
    # Its end record claims 9 entries: zipfile trusts the directory's size, not this count.
    end = blob.rfind(b"PK\x05\x06")
    blob[end + 8 : end + 12] = (9).to_bytes(2, "little") * 2
    (tmp_path / "lies.zip").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="max_members=100 .*central directory entry 101"):
        load_dataset(tmp_path / "lies.zip", max_members=100)
    with pytest.raises(DataError, match="max_total_bytes=1000 .*central directory"):
        load_dataset(tmp_path / "lies.zip", max_total_bytes=1000)
    npz = write_npz(tmp_path / "d.npz", x=good_x(), y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="max_members=1 "):
        load_dataset(npz, max_members=1)


def test_a_huge_extended_tar_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    files, _, _ = image_files()
    path = tmp_path / "pax.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for rel, blob in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(blob)
            if rel == "dog/0001.png":
                info.pax_headers = {"comment": "x" * (2 << 20)}
            tf.addfile(info, io.BytesIO(blob))
    with pytest.raises(DataError, match="extended header of 2097.* bytes .*over 1048576"):
        load_dataset(path)


def test_a_chain_of_long_name_headers_is_refused_not_a_crash(tmp_path: Path) -> None:
    files, _, _ = image_files()
    link = tarfile.TarInfo("././@LongLink")
    link.type, link.size = tarfile.GNUTYPE_LONGNAME, 2
    block = link.tobuf(tarfile.GNU_FORMAT) + b"a\0".ljust(512, b"\0")
    blob = write_tar(tmp_path / "d.tar", files).read_bytes()
    (tmp_path / "chain.tar").write_bytes(block * 5000 + blob)
    with pytest.raises(DataError, match="chain of hundreds of extended headers"):
        load_dataset(tmp_path / "chain.tar")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bell\x07", "control or invisible character U+0007"),
        ("new\nline", "U+000A"),
        ("rtl\u202eoverride", "U+202E"),
        ("\udcff", "bytes that are not UTF-8"),  # how tarfile reads a name that is not UTF-8
        ("x" * 201, "has 201 characters; names must have 1 to 200"),
    ],
)
def test_unsafe_class_folder_names_are_refused(tmp_path: Path, name: str, message: str) -> None:
    files, _, _ = image_files()
    files[f"{name}/0.png"] = files["cat/0000.png"]
    path = tmp_path / "d.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, errors="surrogateescape") as tf:
        for rel, blob in files.items():
            member = tarfile.TarInfo(rel)
            member.size = len(blob)
            tf.addfile(member, io.BytesIO(blob))
    with pytest.raises(DataError, match="class name") as info:
        load_dataset(path)
    assert message in str(info.value)
    assert "\x07" not in str(info.value)  # shown escaped


def test_npz_class_names_are_bounded(tmp_path: Path) -> None:
    y = np.array([0, 1, 0, 1])
    for classes, message in [
        (["ok", "tab\there"], "U+0009"),
        (["ok", ""], "names must have 1 to 200"),
        ([f"{i:0200d}" for i in range(5001)], "longer than 1000000 characters"),
    ]:
        path = write_npz(tmp_path / "d.npz", x=good_x(), y=y, classes=np.array(classes))
        with pytest.raises(DataError, match="class name") as info:
            load_dataset(path)
        assert message in str(info.value)
    path = write_npz(tmp_path / "d.npz", x=good_x(), y=y, classes=np.array(["été", "日本"]))
    assert load_dataset(path).classes == ["été", "日本"]


def test_decoded_size_is_limited(tmp_path: Path) -> None:
    # A PNG of zeros is tiny but decodes to H * W * C bytes.
    files = {f"{c}/0.png": png_bytes(np.zeros((512, 512, 3), np.uint8)) for c in "ab"}
    path = write_zip(tmp_path / "d.zip", files)
    with pytest.raises(DataError, match="decoded"):
        load_dataset(path, max_total_bytes=2**20)
    gray = {f"{c}/0.png": png_bytes(np.zeros((512, 512), np.uint8)) for c in "ab"}
    ds = load_dataset(write_zip(tmp_path / "g.zip", gray), max_total_bytes=2**20)
    assert ds.input_shape == (1, 512, 512)  # grayscale needs a third of the RGB bytes


def test_image_over_pixel_limit_refused(tmp_path: Path) -> None:
    files, _, _ = image_files()  # 8 x 6 = 48 pixels each
    path = write_zip(tmp_path / "d.zip", files)
    with pytest.raises(DataError, match="8x6 = 48 pixels, over the limit of 40"):
        load_dataset(path, max_image_pixels=40)
    assert len(load_dataset(path, max_image_pixels=48)) == 9


def test_mismatched_image_sizes_refused(tmp_path: Path) -> None:
    files, _, _ = image_files()
    files["dog/9999.png"] = png_bytes(pixels(0, h=5, w=5))
    with pytest.raises(DataError) as info:
        load_dataset(write_zip(tmp_path / "d.zip", files))
    message = str(info.value)
    assert "'dog/9999.png' is 5x5" in message
    assert "'airplane/0000.png' is 8x6" in message
    assert "same size" in message


def test_corrupt_zip_refused(tmp_path: Path) -> None:
    files, _, _ = image_files()
    blob = write_zip(tmp_path / "d.zip", files).read_bytes()
    (tmp_path / "half.zip").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="half.zip: not a readable zip archive"):
        load_dataset(tmp_path / "half.zip")
    (tmp_path / "junk.zip").write_bytes(os.urandom(1000))
    with pytest.raises(DataError, match="junk.zip"):
        load_dataset(tmp_path / "junk.zip")


def test_corrupt_zip_member_refused(tmp_path: Path) -> None:
    files, _, _ = image_files()
    blob = bytearray(write_zip(tmp_path / "d.zip", files).read_bytes())
    # Flip bytes inside the first member's compressed data: CRC check or inflate fails.
    with zipfile.ZipFile(io.BytesIO(bytes(blob))) as zf:
        first = zf.infolist()[0]
    start = first.header_offset + 30 + len(first.filename) + 20
    blob[start : start + 8] = bytes(b ^ 0xFF for b in blob[start : start + 8])
    (tmp_path / "bad.zip").write_bytes(bytes(blob))
    with pytest.raises(DataError, match=repr(first.filename)):
        load_dataset(tmp_path / "bad.zip")


@pytest.mark.parametrize("kind", ["tar", "tar.gz"])
def test_truncated_tar_refused(tmp_path: Path, kind: str) -> None:
    files, _, _ = image_files()
    blob = WRITERS[kind](tmp_path, files).read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(blob[: len(blob) // 2 + 100])
    with pytest.raises(DataError, match=f"cut.{kind}"):
        load_dataset(cut)


def test_tar_with_corrupt_header_or_no_end_marker_refused(tmp_path: Path) -> None:
    # tarfile itself would stop quietly at the bad header and return the first members only.
    files, _, _ = image_files()
    blob = bytearray(write_tar(tmp_path / "d.tar", files).read_bytes())
    header = 512 * 2  # second member: a header block, then one data block per member
    assert blob[header : header + 12].startswith(b"airplane/")
    blob[header + 100] ^= 0xFF
    (tmp_path / "bad.tar").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="bad.tar: .*truncated or corrupt"):
        load_dataset(tmp_path / "bad.tar")
    # Cut exactly after a member: no end-of-archive marker.
    (tmp_path / "cut.tar").write_bytes(bytes(blob[:header]))
    with pytest.raises(DataError, match="cut.tar: .*truncated or corrupt"):
        load_dataset(tmp_path / "cut.tar")


def test_gzip_checksum_verified(tmp_path: Path) -> None:
    files, _, _ = image_files()
    blob = bytearray(write_tar(tmp_path / "d.tar.gz", files, "w:gz").read_bytes())
    blob[-8] ^= 0xFF  # the gzip trailer's CRC-32
    (tmp_path / "crc.tar.gz").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="crc.tar.gz: .*CRC"):
        load_dataset(tmp_path / "crc.tar.gz")


@pytest.mark.parametrize(
    "blob", [b"garbage, not a png", png_bytes(pixels(0))[:60]], ids=["garbage", "truncated"]
)
def test_corrupt_image_names_the_file(tmp_path: Path, blob: bytes) -> None:
    files, _, _ = image_files()
    files["cat/0001.png"] = blob
    with pytest.raises(DataError, match="'cat/0001.png'"):
        load_dataset(write_zip(tmp_path / "d.zip", files))


def test_layout_errors(tmp_path: Path) -> None:
    one_class = {f"train/cat/{i}.png": png_bytes(pixels(i)) for i in range(3)}
    with pytest.raises(DataError, match="only the class folder 'cat'"):
        load_dataset(write_zip(tmp_path / "one.zip", one_class))
    loose = {**image_files()[0], "stray.png": png_bytes(pixels(0))}
    with pytest.raises(DataError, match="'stray.png' is not inside a class folder"):
        load_dataset(write_zip(tmp_path / "loose.zip", loose))
    with pytest.raises(DataError, match="no PNG or JPEG images found"):
        load_dataset(write_zip(tmp_path / "empty.zip", {"README": b"hi"}))


# ------------------------------------------------------------------------------ real data


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_TEST.exists(), reason=f"CIFAR-10 test archive not at {CIFAR_TEST}")
def test_cifar10_test_archive() -> None:
    start = time.perf_counter()
    ds = load_dataset(CIFAR_TEST)
    elapsed = time.perf_counter() - start
    assert len(ds) == 10_000
    assert ds.input_shape == (3, 32, 32)
    assert ds.x.dtype == torch.uint8
    assert ds.classes == CIFAR_CLASSES
    assert torch.bincount(ds.y).tolist() == [1000] * 10
    assert elapsed < 30, f"loading took {elapsed:.1f} s"
