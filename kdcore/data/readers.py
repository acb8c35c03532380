"""Reading dataset files from disk into a :class:`~kdcore.data.dataset.Dataset`.

This module is the data side's attack surface: uploads are untrusted, and everything that
turns bytes on disk into arrays (archive and folder walking, the decompression budget, member
names, links, ``.npz`` headers, image decoding) lives here and nowhere else, so it can be
reviewed and tested as one piece. The in-memory operations on the result are in
:mod:`kdcore.data.dataset` and :mod:`kdcore.data.normalizer`.

:func:`load_dataset` reads one of these formats, chosen by the path's suffix:

``.npz``
    Arrays ``x`` and ``y``, optionally ``classes`` (a string array, label order). Never
    unpickled. ``x`` is ``(N, C, H, W)``, ``(N, H, W, C)`` (taken as channels-last when the last
    dimension is 1, 3 or 4 and dimension 1 is not), ``(N, H, W)`` (grayscale, becomes C = 1) or
    ``(N, F)`` (vectors). ``uint8`` stays ``uint8``; every other numeric dtype becomes
    ``float32``. ``y`` holds integer labels in ``[0, num_classes)``, where ``num_classes`` is
    ``len(classes)`` when given, else ``max(y) + 1``.

Image folders: ``.zip``, ``.tar``, ``.tar.gz`` / ``.tgz``, ``.tar.bz2``, ``.tar.xz``, or a directory
    One folder per class holding PNG or JPEG images (``airplane/0001.png``), optionally under
    common top folders (``train/airplane/0001.png``), which are stripped. Images deeper inside a
    class folder belong to that class. Classes are the folder names in sorted order; samples
    are ordered by path, so every container of the same files gives the same dataset. Hidden
    files, ``__MACOSX/`` and files that are not ``.png`` / ``.jpg`` / ``.jpeg`` are ignored.
    Members are read straight from the archive, never extracted; only regular files are read
    (symlinks, hard links and devices are skipped, not followed), and a member whose name is
    absolute or contains ``..`` fails the load. All images must have the same size. If every
    image is grayscale (PIL mode ``L``) the data has one channel, otherwise images are
    converted to RGB. ``x`` is ``uint8`` ``(N, C, H, W)``.

Limits for untrusted uploads: ``max_samples`` (N), ``max_image_pixels`` (width × height of
one image, checked from the header before decoding), ``max_total_bytes``, which bounds the
uncompressed bytes read (declared sizes are checked before reading and actual bytes are
counted while reading; a tar stream counts every byte it decompresses: the 512-byte header of
each member, extended headers, padding and the members it skips; a zip counts its central
directory), the size of the decoded array, and for ``.npz`` the arrays' sizes from their
headers; and ``max_members``, the entries of an archive or folder (files, folders and links,
images or not: each costs a header to read and parse, whatever its size), counted while
streaming, so an archive of millions of empty members is refused at the first one over the
limit (a zip's central directory is counted before :mod:`zipfile` reads it). A tar's extended
headers (pax, GNU long names) are read whole, so each is capped at 1 MiB.

Class names (folder names, or ``.npz``'s ``classes``) are checked too: at most
:data:`MAX_CLASSES` classes, each name 1 to :data:`MAX_CLASS_NAME_CHARS` characters with no
control, formatting or separator characters (and valid UTF-8 in an archive), and at most
:data:`MAX_CLASS_NAMES_CHARS` characters together: they are stored, listed by the API and
written into every report and exported student.
"""

from __future__ import annotations

import bz2
import collections
import contextlib
import gzip
import io
import lzma
import math
import os
import stat
import struct
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Self

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from kdcore.data.dataset import DataError, Dataset

__all__ = ["MAX_CLASSES", "MAX_CLASS_NAMES_CHARS", "MAX_CLASS_NAME_CHARS", "load_dataset"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_PIL_FORMATS = ("PNG", "JPEG")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_SUPPORTED = (
    ".npz (arrays x, y and optional classes), or an image folder (one folder per class of "
    "PNG/JPEG images) as .zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz or a directory"
)
# Errors PIL raises on bad input; they vary by codec, so the decoder boundary catches them all.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
# Bounds label values, so one stray label cannot make per-class arrays of gigabytes.
MAX_CLASSES = 100_000
MAX_CLASS_NAME_CHARS = 200
# All names together: they travel in every validation result and report (a 100,000-class
# dataset numbered 0 .. 99999 has 488,890 characters of names).
MAX_CLASS_NAMES_CHARS = 1_000_000
# Unicode categories refused in class names: control (Cc), format (Cf: bidi overrides,
# zero-width characters), surrogates (Cs: bytes that were not UTF-8), line/paragraph separators.
_BAD_NAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# pax and GNU long-name headers hold a path or a few attributes; tarfile reads each one whole.
_MAX_EXTENDED_HEADER = 1 << 20
_EXTENDED_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


def load_dataset(
    path: str | Path,
    *,
    max_samples: int | None = None,
    max_image_pixels: int = 4096 * 4096,
    max_total_bytes: int = 8 * 2**30,
    max_members: int | None = None,
) -> Dataset:
    """Load a dataset from an ``.npz`` file or an image folder (archive or directory).

    The formats and the limits are described in this module's docstring.

    Args:
        path: the file or directory.
        max_samples: refuse datasets with more samples than this (``None``: no limit).
        max_image_pixels: refuse any image whose width × height is larger.
        max_total_bytes: refuse data whose uncompressed or decoded size is larger.
        max_members: refuse archives and folders with more entries than this (``None``: no
            limit; the service sets one for uploads).

    Raises:
        DataError: the file is missing, corrupt, of an unsupported format, breaks a limit or
            holds invalid data; the message names the file or member and what to fix.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    if min(max_image_pixels, max_total_bytes, 1 if max_members is None else max_members) < 1:
        raise ValueError("max_image_pixels, max_total_bytes and max_members must be positive")
    path = Path(path)
    limits = _Limits(max_samples, max_image_pixels, max_total_bytes, max_members)
    if path.is_dir():
        return _load_folder(path, "dir", limits)
    if not path.is_file():
        raise DataError(f"{path}: no such file or directory")
    name = path.name.lower()
    if name.endswith(".npz"):
        return _load_npz(path, limits)
    if name.endswith(".zip"):
        return _load_folder(path, "zip", limits)
    if name.endswith(_TAR_SUFFIXES):
        return _load_folder(path, "tar", limits)
    raise DataError(f"{path.name}: unsupported dataset format; supported: {_SUPPORTED}")


@dataclass(frozen=True)
class _Limits:
    max_samples: int | None
    max_image_pixels: int
    max_total_bytes: int
    max_members: int | None

    def check_samples(self, n: int, source: str) -> None:
        if self.max_samples is not None and n > self.max_samples:
            raise DataError(
                f"{source}: holds more than max_samples={self.max_samples} samples "
                f"(at least {n}); use a smaller dataset"
            )


class _Budget:
    """Uncompressed bytes and entries still allowed: the zip-bomb guard."""

    def __init__(self, limits: _Limits, source: str) -> None:
        self.limit = limits.max_total_bytes
        self.max_members = limits.max_members
        self.used = 0
        self.members = 0
        self.source = source

    def member(self, name: str) -> None:
        """Count one entry (of any kind) about to be looked at."""
        self.members += 1
        self.check_members(self.members, name)

    def check_members(self, total: int, name: str) -> None:
        if self.max_members is not None and total > self.max_members:
            raise DataError(
                f"{self.source}: more than max_members={self.max_members} entries (files, "
                f"folders and links, images or not; reached at {name!r}); remove what is not "
                "an image, or send many small samples as one .npz file"
            )

    def take(self, n: int, member: str) -> None:
        """Count ``n`` bytes actually read (or about to be decompressed) for ``member``."""
        self.used += n
        self.check(self.used, member)

    def check(self, total: int, member: str) -> None:
        """Refuse when ``total`` bytes (declared or read so far) are over the limit."""
        if total > self.limit:
            raise DataError(
                f"{self.source}: more than max_total_bytes={self.limit} uncompressed bytes "
                f"(reached at {member!r}); the archive is too large or a decompression bomb"
            )


# --------------------------------------------------------------------------------------- npz


def _load_npz(path: Path, limits: _Limits) -> Dataset:
    source = path.name
    _check_zip_directory(path, _Budget(limits, source))  # an .npz is a zip
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{source}: not a readable .npz file ({exc})") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{source}: holds a single array, not an .npz archive of x and y")
    with npz:
        keys = list(npz.files)
        missing = [k for k in ("x", "y") if k not in keys]
        if missing:
            raise DataError(
                f"{source}: missing array(s) {', '.join(missing)}; found "
                f"{', '.join(keys) or 'no arrays'}; save with np.savez(path, x=..., y=...)"
            )
        wanted = ["x", "y"] + (["classes"] if "classes" in keys else [])
        shapes = _check_npz_sizes(npz, wanted, source, limits)
        if shapes["x"] and shapes["x"][0] == 0:
            raise DataError(f"{source}: x is empty; the dataset needs at least one sample")
        limits.check_samples(shapes["x"][0] if shapes["x"] else 0, source)
        arrays = {}
        for key in wanted:
            try:
                arrays[key] = npz[key]
            except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise DataError(
                    f"{source}: cannot read array {key!r} ({exc}); save plain numeric arrays "
                    "(and classes as np.array(names, dtype=str)), not Python objects"
                ) from exc
    x = _npz_x(arrays["x"], source)
    y = _npz_y(arrays["y"], source)
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"{source}: x has {x.shape[0]} samples but y has {y.shape[0]} labels; "
            "they must match one to one"
        )
    classes = _npz_classes(arrays["classes"], source) if "classes" in arrays else None
    num_classes = len(classes) if classes is not None else int(y.max()) + 1
    if num_classes > MAX_CLASSES:
        raise DataError(
            f"{source}: {num_classes} classes (labels up to {int(y.max())}); at most "
            f"{MAX_CLASSES} are supported; number the classes 0 .. K-1"
        )
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise DataError(
            f"{source}: label {bad} is out of range; labels must be in [0, {num_classes})"
            + (f" for the {num_classes} names in classes" if classes is not None else "")
        )
    present = int(np.count_nonzero(np.bincount(y, minlength=num_classes)))
    if present < 2:
        raise DataError(
            f"{source}: y holds only {present} distinct class; classification needs at least 2"
        )
    if classes is None:
        classes = [str(i) for i in range(num_classes)]
    return Dataset(torch.from_numpy(x), torch.from_numpy(y), classes)


def _check_npz_sizes(
    npz: Any, keys: list[str], source: str, limits: _Limits
) -> dict[str, tuple[int, ...]]:
    """Read each array's header and refuse oversized arrays before numpy allocates them."""
    zf: zipfile.ZipFile = npz.zip
    names = set(zf.namelist())
    shapes: dict[str, tuple[int, ...]] = {}
    total = 0
    for key in keys:
        member = f"{key}.npy" if f"{key}.npy" in names else key
        try:
            with zf.open(member) as fp:
                version = np.lib.format.read_magic(fp)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise DataError(f"{source}: array {key!r} is unreadable ({exc})") from exc
        if dtype.hasobject:
            raise DataError(
                f"{source}: array {key!r} holds Python objects, which are never unpickled; "
                "save numbers, and class names as np.array(names, dtype=str)"
            )
        shapes[key] = tuple(shape)
        total += math.prod(shape) * dtype.itemsize
        if total > limits.max_total_bytes:
            raise DataError(
                f"{source}: arrays are larger than max_total_bytes={limits.max_total_bytes}"
            )
    return shapes


def _npz_x(x: npt.NDArray[Any], source: str) -> npt.NDArray[Any]:
    if not (x.dtype == np.uint8 or x.dtype.kind in "biuf"):
        raise DataError(f"{source}: x must be numeric (uint8 or float), got dtype {x.dtype}")
    if x.ndim == 4:
        if x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    elif x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W)
    elif x.ndim != 2:
        raise DataError(
            f"{source}: x has shape {x.shape}; expected (N, C, H, W), (N, H, W, C), (N, H, W) "
            "or (N, F)"
        )
    if math.prod(x.shape[1:]) == 0:
        raise DataError(f"{source}: x has shape {x.shape}; every sample needs at least one value")
    if x.dtype != np.uint8:
        with np.errstate(over="ignore"):  # overflow to inf is reported just below
            x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(
                f"{source}: x holds NaN or infinite values (or values beyond float32's range); "
                "clean or impute them before uploading"
            )
    return np.ascontiguousarray(x)


def _npz_y(y: npt.NDArray[Any], source: str) -> npt.NDArray[np.int64]:
    if y.dtype.kind not in "iu":
        raise DataError(
            f"{source}: y must hold integer class labels, got dtype {y.dtype}; "
            "convert with y.astype(np.int64)"
        )
    if y.ndim != 1:
        raise DataError(f"{source}: y must be 1-D (N,), got shape {y.shape}; use y.reshape(-1)")
    if y.shape[0] == 0:
        raise DataError(f"{source}: y is empty; the dataset needs at least one sample")
    if y.dtype == np.uint64 and int(y.max()) > np.iinfo(np.int64).max:
        raise DataError(f"{source}: label {int(y.max())} is out of range")
    return np.ascontiguousarray(y.astype(np.int64))


def _npz_classes(classes: npt.NDArray[Any], source: str) -> list[str]:
    if classes.dtype.kind not in "US" or classes.ndim != 1:
        raise DataError(
            f"{source}: classes must be a 1-D string array such as np.array(names, dtype=str), "
            f"got dtype {classes.dtype} shape {classes.shape}"
        )
    if classes.shape[0] > MAX_CLASSES:
        raise DataError(
            f"{source}: classes holds {classes.shape[0]} names; at most {MAX_CLASSES} classes "
            "are supported"
        )
    try:
        names = [c.decode() if isinstance(c, bytes) else str(c) for c in classes.tolist()]
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{source}: class names must be UTF-8 text ({exc}); save them with dtype=str"
        ) from exc
    _check_class_names(names, source)
    if len(set(names)) != len(names):
        dupes = sorted(c for c, k in collections.Counter(names).items() if k > 1)
        raise DataError(f"{source}: class names must be unique; repeated: {', '.join(dupes)}")
    return names


def _check_class_names(names: list[str], source: str) -> None:
    """Refuse class names that would be unsafe or unbounded to store, list and show."""
    if len(names) > MAX_CLASSES:
        raise DataError(f"{source}: {len(names)} classes; at most {MAX_CLASSES} are supported")
    total = 0
    for name in names:
        if not 1 <= len(name) <= MAX_CLASS_NAME_CHARS:
            shown = f"{name[:40]!r}..." if name else "''"
            raise DataError(
                f"{source}: class name {shown} has {len(name)} characters; names must have "
                f"1 to {MAX_CLASS_NAME_CHARS}"
            )
        bad = next((c for c in name if unicodedata.category(c) in _BAD_NAME_CATEGORIES), None)
        if bad is not None:
            what = (
                "bytes that are not UTF-8"
                if unicodedata.category(bad) == "Cs"
                else (f"the control or invisible character U+{ord(bad):04X}")
            )
            raise DataError(
                f"{source}: class name {name!r} holds {what}; use printable names such as "
                "'airplane'"
            )
        total += len(name)
        if total > MAX_CLASS_NAMES_CHARS:
            raise DataError(
                f"{source}: the class names together are longer than {MAX_CLASS_NAMES_CHARS} "
                "characters; use shorter names"
            )


# ----------------------------------------------------------------------------- image folders


@dataclass(frozen=True)
class _Member:
    """One image file of an image folder."""

    parts: tuple[str, ...]  # path inside the container, root folders stripped later
    name: str  # as written in the container, for messages
    read: Callable[[], bytes]


def _load_folder(path: Path, kind: str, limits: _Limits) -> Dataset:
    source = path.name
    budget = _Budget(limits, source)
    if kind == "dir":
        return _build_folder(_dir_members(path, budget, limits), source, limits)
    if kind == "tar":
        return _build_folder(_tar_members(path, budget, limits), source, limits)
    _check_zip_directory(path, budget)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{source}: not a readable zip archive ({exc})") from exc
    with zf:
        return _build_folder(_zip_members(zf, budget, limits), source, limits)


def _member_parts(name: str, source: str) -> tuple[str, ...] | None:
    """Path parts of an image member, ``None`` for members to ignore; refuses escaping names."""
    norm = name.replace("\\", "/")
    parts = norm.split("/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in parts:
        raise DataError(
            f"{source}: member {name!r} has an absolute path or '..'; archives must hold "
            "relative paths such as airplane/0001.png"
        )
    parts = [p for p in parts if p not in ("", ".")]
    if not parts or not parts[-1].lower().endswith(_IMAGE_SUFFIXES):
        return None
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None  # macOS metadata (._x.png) and hidden files
    return tuple(parts)


def _zip_members(zf: zipfile.ZipFile, budget: _Budget, limits: _Limits) -> list[_Member]:
    members: list[_Member] = []
    declared = budget.used  # the central directory
    for info in zf.infolist():
        budget.member(info.filename)
        parts = _member_parts(info.filename, budget.source)
        if info.is_dir() or parts is None:
            continue
        # Unix file type in the high bits (0 when the zip was not made on unix).
        file_type = stat.S_IFMT(info.external_attr >> 16)
        if file_type and file_type != stat.S_IFREG:
            continue  # symlink or device entry: never followed
        declared += info.file_size
        budget.check(declared, info.filename)  # before reading anything
        members.append(_Member(parts, info.filename, _zip_reader(zf, info, budget)))
        limits.check_samples(len(members), budget.source)
    return members


def _check_zip_directory(path: Path, budget: _Budget) -> None:
    """Count a zip's central directory against the budget before :mod:`zipfile` reads it.

    ``zipfile`` reads the whole directory and builds an object per entry when it opens the
    file, and the entry count in the end record may lie, so the entries are counted from the
    directory itself, 46 fixed bytes and three lengths each, stopping past ``max_members``.
    Its bytes count as read. Nothing is checked when there is no directory to find (zipfile
    then says what is wrong).
    """
    # The end record's reader and field indices are private, but have been stable for ages.
    zf: Any = zipfile
    try:
        with path.open("rb") as fp:
            end = zf._EndRecData(fp)
            if not end:
                return
            size = end[zf._ECD_SIZE]
            budget.check(size, "(central directory)")
            budget.used += size
            # The directory ends where the end record (or the zip64 end record and its
            # locator) begins, whatever its stated offset (data may precede the archive).
            start = end[zf._ECD_LOCATION] - size
            if end[zf._ECD_SIGNATURE] == zf.stringEndArchive64:
                start -= zf.sizeEndCentDir64 + zf.sizeEndCentDir64Locator
            if start < 0:
                return
            fp.seek(start)
            seen = count = 0
            while seen < size:
                head = fp.read(46)
                if len(head) != 46 or head[:4] != b"PK\x01\x02":
                    return
                name, extra, comment = struct.unpack_from("<HHH", head, 28)
                fp.seek(name + extra + comment, os.SEEK_CUR)
                seen += 46 + name + extra + comment
                count += 1
                budget.check_members(count, f"(central directory entry {count})")
    except (OSError, struct.error):
        return


def _zip_reader(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with zf.open(info) as fp:
                data = fp.read(info.file_size + 1)
        except NotImplementedError as exc:
            raise DataError(
                f"{budget.source}: {info.filename!r} uses an unsupported compression ({exc}); "
                "re-create the zip with deflate"
            ) from exc
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError) as exc:
            # RuntimeError: an encrypted member.
            raise DataError(f"{budget.source}: cannot read {info.filename!r} ({exc})") from exc
        budget.take(len(data), info.filename)
        return data

    return read


def _tar_members(path: Path, budget: _Budget, limits: _Limits) -> list[_Member]:
    members: list[_Member] = []
    try:
        with contextlib.ExitStack() as stack:
            stream = _decompressed(stack.enter_context(path.open("rb")), stack)
            # Stream mode: one pass over the file, no seeking back.
            tf = stack.enter_context(
                tarfile.open(fileobj=stream, mode="r|", tarinfo=_StrictTarInfo)
            )
            while (info := tf.next()) is not None:
                # Stream mode keeps every header it read otherwise: memory would grow with
                # the member count (a list typeshed does not declare).
                tf.members.clear()  # type: ignore[attr-defined]
                budget.member(info.name)
                # Everything up to the end of this member is decompressed, headers, padding
                # and skipped members included: counted before its data is read.
                budget.take(tf.offset - budget.used, info.name)
                parts = _member_parts(info.name, budget.source)
                if not info.isreg():
                    continue  # symlinks, hard links, devices, directories: never followed
                if parts is None:
                    continue
                fp = tf.extractfile(info)
                if fp is None:
                    continue
                data = fp.read(info.size)
                if len(data) != info.size:
                    raise DataError(f"{budget.source}: {info.name!r} is truncated")
                members.append(_Member(parts, info.name, _constant(data)))
                limits.check_samples(len(members), budget.source)
            # Read the padding after the end marker too, so gzip/bz2/xz verify their checksums.
            while chunk := stream.read(1 << 16):
                budget.take(len(chunk), "(end of archive)")
    except _TAR_ERRORS as exc:
        raise DataError(
            f"{budget.source}: not a readable tar archive, or corrupt or truncated ({exc})"
        ) from exc
    except RecursionError as exc:  # tarfile follows a chain of long-name headers recursively
        raise DataError(
            f"{budget.source}: a chain of hundreds of extended headers before one member; "
            "not a tar archive any tool writes"
        ) from exc
    return members


def _decompressed(raw: BinaryIO, stack: contextlib.ExitStack) -> io.BufferedIOBase | BinaryIO:
    """``raw`` seen through its compression, told by magic bytes, not by the file name.

    The file objects of ``gzip``, ``bz2`` and ``lzma`` bound the output of each read, so a
    highly compressed member costs no more memory than the bytes asked for.
    """
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
    if magic.startswith(b"BZh"):
        return stack.enter_context(bz2.BZ2File(raw))
    if magic == b"\xfd7zXZ\x00":
        return stack.enter_context(lzma.LZMAFile(raw))
    return raw


class _StrictTarInfo(tarfile.TarInfo):
    """Fails on a bad header instead of ending the archive there.

    ``tarfile`` treats a truncated, missing or corrupt header after the first one as the end
    of the archive, which would silently drop the rest of the samples; only the zero block of
    a real end-of-archive marker may end it.
    """

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tf)
        except tarfile.HeaderError as exc:
            # EOFHeaderError is the end-of-archive zero block (typeshed does not list it).
            if type(exc).__name__ == "EOFHeaderError":
                raise
            raise tarfile.ReadError(
                f"bad or missing header at byte {tf.offset} ({exc}); the archive is "
                "truncated or corrupt"
            ) from None

    def _proc_member(self, tf: tarfile.TarFile) -> Self | None:
        # Extended headers are read into memory whole, before the caller sees anything.
        if self.type in _EXTENDED_TYPES and self.size > _MAX_EXTENDED_HEADER:
            raise tarfile.ReadError(
                f"an extended header of {self.size} bytes at byte {self.offset}, over "
                f"{_MAX_EXTENDED_HEADER}"
            )
        return super()._proc_member(tf)  # type: ignore[misc]


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _dir_members(root: Path, budget: _Budget, limits: _Limits) -> list[_Member]:
    members: list[_Member] = []
    declared = 0
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError as exc:
            raise DataError(f"{folder}: cannot list directory ({exc})") from exc
        with entries:
            for entry in entries:  # streamed: counted before the next one is listed
                rel = Path(entry.path).relative_to(root).as_posix()
                budget.member(rel)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue  # symlinks and special files: never followed
                parts = _member_parts(rel, root.name)
                if parts is None:
                    continue
                size = entry.stat(follow_symlinks=False).st_size
                declared += size
                budget.check(declared, rel)  # before reading anything
                reader = _file_reader(Path(entry.path), size, rel, budget)
                members.append(_Member(parts, rel, reader))
                limits.check_samples(len(members), root.name)
    return members


def _file_reader(path: Path, size: int, rel: str, budget: _Budget) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with path.open("rb") as fp:
                data = fp.read(size + 1)
        except OSError as exc:
            raise DataError(f"{rel}: cannot read ({exc})") from exc
        budget.take(len(data), rel)
        return data

    return read


def _build_folder(members: list[_Member], source: str, limits: _Limits) -> Dataset:
    if not members:
        raise DataError(
            f"{source}: no PNG or JPEG images found; expected one folder per class, "
            "e.g. airplane/0001.png, bird/0001.png"
        )
    paths = [m.parts for m in members]
    # Strip top folders shared by every image (train/airplane/x.png -> airplane/x.png).
    depth = 0
    while all(len(p) - depth >= 3 for p in paths) and len({p[depth] for p in paths}) == 1:
        depth += 1
    for m in members:
        if len(m.parts) - depth < 2:
            raise DataError(
                f"{source}: image {m.name!r} is not inside a class folder; expected "
                "<class>/<image>, e.g. airplane/0001.png"
            )
    order = sorted(range(len(members)), key=lambda i: paths[i][depth:])
    members = [members[i] for i in order]
    classes = sorted({m.parts[depth] for m in members})
    _check_class_names(classes, source)
    if len(classes) < 2:
        raise DataError(
            f"{source}: found only the class folder {classes[0]!r}; classification needs at "
            "least two class folders"
        )
    label_of = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([label_of[m.parts[depth]] for m in members], dtype=torch.int64)
    x = _decode_images(members, source, limits)
    return Dataset(torch.from_numpy(x), y, classes)


def _open_image(data: bytes, name: str, source: str, max_pixels: int) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{source}: image {name!r} is too large ({exc})") from exc
    except _DECODE_ERRORS as exc:
        raise DataError(f"{source}: {name!r} is not a readable PNG/JPEG image ({exc})") from exc
    w, h = img.size
    if w * h > max_pixels:
        raise DataError(
            f"{source}: image {name!r} is {w}x{h} = {w * h} pixels, over the limit of "
            f"{max_pixels}; resize the images"
        )
    return img


def _decode_images(members: list[_Member], source: str, limits: _Limits) -> npt.NDArray[np.uint8]:
    """Decode every image into one preallocated ``(N, C, H, W)`` uint8 array."""
    n = len(members)
    first = _open_image(members[0].read(), members[0].name, source, limits.max_image_pixels)
    size = first.size
    channels = 1 if first.mode == "L" else 3
    w, h = size
    _check_decoded_size(n, channels, h, w, source, limits)
    x = np.empty((n, channels, h, w), dtype=np.uint8)
    img: Image.Image | None = first
    for i, m in enumerate(members):
        if img is None:
            img = _open_image(m.read(), m.name, source, limits.max_image_pixels)
        if img.size != size:
            raise DataError(
                f"{source}: image {m.name!r} is {img.size[0]}x{img.size[1]} but "
                f"{members[0].name!r} is {w}x{h}; all images must have the same size"
            )
        try:
            if channels == 1 and img.mode != "L":
                # First colour image after grayscale ones: grayscale -> RGB repeats the channel.
                _check_decoded_size(n, 3, h, w, source, limits)
                rgb = np.empty((n, 3, h, w), dtype=np.uint8)
                rgb[:i] = x[:i]
                x, channels = rgb, 3
            if channels == 1:
                x[i, 0] = np.asarray(img)  # (H, W)
            else:
                if img.mode != "RGB":
                    img = img.convert("RGB")
                x[i] = np.asarray(img).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        except _DECODE_ERRORS as exc:
            raise DataError(
                f"{source}: image {m.name!r} is corrupt, truncated or in an unsupported pixel "
                f"format ({exc})"
            ) from exc
        img = None
    return x


def _check_decoded_size(n: int, c: int, h: int, w: int, source: str, limits: _Limits) -> None:
    if n * c * h * w > limits.max_total_bytes:
        raise DataError(
            f"{source}: {n} images of {c}x{h}x{w} need more than max_total_bytes="
            f"{limits.max_total_bytes} bytes decoded; use fewer or smaller images"
        )
