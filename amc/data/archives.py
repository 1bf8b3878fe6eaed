"""An ImageFolder archive from an untrusted source (.tar, .tar.gz, .zip), checked before and after it is unpacked.

Lifecycle: ``unpack_image_folder(archive, dest, limits) -> FolderSummary``:

1. ``inspect_archive`` reads the member list only (nothing is written): at most ``limits.entries``
   members; the sum of their declared sizes at most ``limits.unpacked_bytes`` (compression bombs), each
   image at most ``limits.member_bytes``; no
   absolute path, no ``..``, no backslash or drive in a name; nothing but regular files and folders
   (no symbolic or hard link, device, FIFO); no encrypted zip member; for tar, the standard library's
   ``data`` extraction filter must accept each member too. Files outside ``[top/]split/class/image``
   or without an image suffix are skipped (never written); ``__MACOSX`` and dot files are ignored.
2. The images are copied one by one into a temporary folder beside ``dest`` (``.tmp-<name>``), each
   read in bounded chunks and counted, so a member that inflates past its declared size (or the whole
   past ``limits.unpacked_bytes``) stops the copy; each image is decoded with Pillow (at most
   ``limits.image_pixels`` pixels; bigger ones are refused before decoding).
3. The folder is checked as a data set: ``train/`` and ``test/`` with images, at least two classes, the
   same classes in every split (``amc.data.images.check_classes``).
4. Only then is it renamed to ``dest`` (one ``os.replace``: the data set appears whole or not at all).

Any problem is one ``ArchiveError`` (a ``DataError``) naming the first one, and the temporary folder
is removed: nothing of a refused archive stays on disk.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from amc.data.images import GRAY_MODES, IMAGE_EXTS, SPLIT_DIRS, check_classes
from amc.errors import DataError

CHUNK = 1 << 16
MiB = 1 << 20


class ArchiveError(DataError):
    """An archive the service refuses (the message names the first problem)."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may hold: members, declared and actual unpacked bytes, pixels per image."""

    entries: int = 100_000
    unpacked_bytes: int = 2048 * MiB
    member_bytes: int = 64 * MiB  # one image file (each is read whole into memory to be decoded)
    image_pixels: int = 4096 * 4096


@dataclass(frozen=True)
class Member:
    """One image member to extract: where it is in the archive and where it goes (split/class/file)."""

    name: str
    size: int  # declared
    split: str
    cls: str
    file: str


@dataclass
class FolderSummary:
    """What an accepted archive held: its classes, images per split, the decoded image shape."""

    classes: list[str]
    images: dict[str, int]
    bytes: int  # unpacked image bytes written
    input_shape: list[int]  # (C, H, W): the most common image size; one channel only if all are grayscale
    skipped: int = 0  # members that were not images under split/class/


# -- 1. the member list ------------------------------------------------------------------------------------
def _archive_kind(path: Path) -> str:
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, EOFError, tarfile.TarError):
        pass
    raise ArchiveError("not a .tar, .tar.gz or .zip archive")


def _check_name(name: str) -> PurePosixPath:
    if not name or "\x00" in name:
        raise ArchiveError(f"entry {name!r}: empty or NUL in its name")
    if "\\" in name:
        raise ArchiveError(f"entry {name!r}: backslash in its name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"entry {name!r}: absolute path")
    p = PurePosixPath(name)
    if ".." in p.parts:
        raise ArchiveError(f"entry {name!r}: '..' in its path")
    return p


def _place(p: PurePosixPath) -> tuple[str, str, str] | None:
    """(split, class, file) for ``[top/]split/class/file`` with an image suffix; None to skip it."""
    parts = [x for x in p.parts if x != "."]
    if any(x.startswith(".") or x == "__MACOSX" for x in parts):
        return None
    if len(parts) == 4:
        parts = parts[1:]  # one top folder
    if len(parts) != 3 or parts[0] not in SPLIT_DIRS or p.suffix.lower() not in IMAGE_EXTS:
        return None
    return parts[0], parts[1], parts[2]


def _tar_members(tar: tarfile.TarFile, dest: Path, limits: ArchiveLimits) -> Iterator[tuple[tarfile.TarInfo, int]]:
    data_filter = getattr(tarfile, "data_filter", None)
    for i, m in enumerate(tar):
        if i >= limits.entries:
            raise ArchiveError(f"more than {limits.entries:,} entries")
        _check_name(m.name)
        if m.issym() or m.islnk():
            raise ArchiveError(f"entry {m.name!r}: a {'symbolic' if m.issym() else 'hard'} link")
        if not (m.isfile() or m.isdir()):
            raise ArchiveError(f"entry {m.name!r}: a device, FIFO or other special file")
        if data_filter is not None:
            try:
                data_filter(m, str(dest))
            except tarfile.FilterError as e:
                raise ArchiveError(f"entry {m.name!r}: {e}") from None
        yield m, i


def inspect_archive(path: Path, limits: ArchiveLimits) -> tuple[str, list[Member], int]:
    """The archive's kind (``tar`` or ``zip``), its image members, and the count of skipped files;
    refuses it (``ArchiveError``) on the first unsafe entry or limit (see the module doc)."""
    kind = _archive_kind(path)
    members: list[Member] = []
    skipped = declared = 0

    def add(name: str, size: int) -> None:
        nonlocal skipped, declared
        declared += size
        if declared > limits.unpacked_bytes:
            raise ArchiveError(f"unpacks to more than {limits.unpacked_bytes:,} bytes (declared sizes)")
        where = _place(_check_name(name))
        if where is None:
            skipped += 1
        elif size > limits.member_bytes:
            raise ArchiveError(f"entry {name!r} is {size:,} bytes: over {limits.member_bytes:,} for one image")
        else:
            members.append(Member(name, size, *where))

    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
                if len(infos) > limits.entries:
                    raise ArchiveError(f"more than {limits.entries:,} entries")
                for info in infos:
                    kind_bits = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix type recorded (a file)
                    _check_name(info.filename)
                    if kind_bits == stat.S_IFLNK:
                        raise ArchiveError(f"entry {info.filename!r}: a symbolic link")
                    if kind_bits not in (0, stat.S_IFREG, stat.S_IFDIR):
                        raise ArchiveError(f"entry {info.filename!r}: a device, FIFO or other special file")
                    if info.flag_bits & 0x1:
                        raise ArchiveError(f"entry {info.filename!r}: encrypted")
                    if not info.is_dir():
                        add(info.filename, info.file_size)
        else:
            with tarfile.open(path, "r:*") as tar:
                for m, _ in _tar_members(tar, path.parent, limits):
                    if m.isfile():
                        add(m.name, m.size)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ArchiveError(f"corrupt archive: {e}") from None
    if not members:
        raise ArchiveError("no images under train/<class>/ or test/<class>/")
    seen = Counter((m.split, m.cls, m.file) for m in members)
    dup = next((k for k, n in seen.items() if n > 1), None)
    if dup is not None:
        raise ArchiveError(f"entry {'/'.join(dup)} appears twice")
    return kind, members, skipped


# -- 2. copy and decode ------------------------------------------------------------------------------------
def _copy(src: IO[bytes], member: Member, budget: int) -> bytes:
    """The member's bytes, read in chunks: at most its declared size and ``budget`` bytes."""
    buf = io.BytesIO()
    while chunk := src.read(CHUNK):
        if buf.tell() + len(chunk) > member.size:
            raise ArchiveError(f"entry {member.name!r} holds more than its declared {member.size:,} bytes")
        if buf.tell() + len(chunk) > budget:
            raise ArchiveError("unpacks to more bytes than the limit")
        buf.write(chunk)
    return buf.getvalue()


def _decode(data: bytes, member: Member, limits: ArchiveLimits) -> tuple[int, int, int]:
    """(H, W, channels) of a decodable image; ``ArchiveError`` otherwise (Pillow, fully decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > limits.image_pixels:
                raise ArchiveError(f"image {member.name!r} is {w}x{h}: over {limits.image_pixels:,} pixels")
            im.load()
            gray = im.mode in GRAY_MODES
    except ArchiveError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ArchiveError(f"image {member.name!r} cannot be decoded: {e}") from None
    return h, w, 1 if gray else 3


def _extract(path: Path, kind: str, members: list[Member], tmp: Path, limits: ArchiveLimits) -> FolderSummary:
    by_name = {m.name: m for m in members}
    left = limits.unpacked_bytes
    shapes: Counter = Counter()
    gray_only = True
    images: Counter = Counter()
    found: dict[str, set[str]] = {}

    def write(m: Member, src: IO[bytes]) -> None:
        nonlocal left, gray_only
        data = _copy(src, m, left)
        left -= len(data)
        h, w, c = _decode(data, m, limits)
        shapes[(h, w)] += 1
        gray_only = gray_only and c == 1
        out = tmp / m.split / m.cls / m.file
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "xb") as f:  # "x": never through a name that already exists
            f.write(data)
        images[m.split] += 1
        found.setdefault(m.split, set()).add(m.cls)

    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    m = by_name.get(info.filename)
                    if m is not None and not info.is_dir():
                        with z.open(info) as src:
                            write(m, src)
        else:
            with tarfile.open(path, "r:*") as tar:
                for t, _ in _tar_members(tar, tmp, limits):
                    m = by_name.get(t.name)
                    if m is not None and t.isfile():
                        member = tar.extractfile(t)
                        assert member is not None
                        write(m, member)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ArchiveError(f"corrupt archive: {e}") from None
    for split in ("train", "test"):
        if not images.get(split):
            raise ArchiveError(f"no {split} images (expected {split}/<class>/<image>)")
    try:
        classes = check_classes(found, "the archive")
    except DataError as e:
        raise ArchiveError(str(e)) from None
    (h, w), _ = shapes.most_common(1)[0]
    return FolderSummary(list(classes), dict(images), limits.unpacked_bytes - left,
                         [1 if gray_only else 3, h, w])


# -- the whole -------------------------------------------------------------------------------------------
def unpack_image_folder(archive: str | os.PathLike, dest: str | os.PathLike,
                        limits: ArchiveLimits | None = None) -> FolderSummary:
    """Check ``archive``, unpack its images beside ``dest`` and rename them to ``dest`` (see the module doc).

    ``dest`` must not exist; its parent must. On any error nothing is left of the archive's contents."""
    limits = limits or ArchiveLimits()
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise ArchiveError(f"{dest.name} exists already")
    kind, members, skipped = inspect_archive(archive, limits)
    tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        summary = _extract(archive, kind, members, tmp, limits)
        summary.skipped = skipped
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def folder_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (0 when it does not exist)."""
    if not root.exists():
        return 0
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
