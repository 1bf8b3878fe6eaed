"""Data-set archives for the service's tests, built in memory from tiny PNGs: good ones and every kind
the service must refuse (``BAD``: name -> (archive bytes, file name, expected status, words of the
message)). ``benchmarks/service_uploads.py`` sends the same set for reports/service.md."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Callable

Entries = dict[str, bytes]


def png(i: int, size: int = 16, mode: str = "RGB") -> bytes:
    """A small PNG whose colour depends on ``i`` (decodable by Pillow)."""
    from PIL import Image

    buf = io.BytesIO()
    colour = (i * 37 % 256, i * 91 % 256, i * 53 % 256) if mode == "RGB" else i * 37 % 256
    Image.new(mode, (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def image_folder(classes: tuple[str, ...] = ("cat", "dog"), train: int = 12, test: int = 8, size: int = 16,
                 top: str = "") -> Entries:
    """``[top/]train/<class>/<n>.png`` and ``test/<class>/<n>.png``: ``train`` / ``test`` images per class."""
    out: Entries = {}
    for c, cls in enumerate(classes):
        for split, n in (("train", train), ("test", test)):
            for i in range(n):
                out[f"{top}{split}/{cls}/{i}.png"] = png(c * 50 + i, size)
    return out


def tar_of(entries: Entries, gz: bool = True, extra: Callable[[tarfile.TarFile], None] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tar)
    return buf.getvalue()


def zip_of(entries: Entries, extra: Callable[[zipfile.ZipFile], None] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        if extra is not None:
            extra(z)
    return buf.getvalue()


def _special(name: str, kind: bytes, link: str = "") -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        tar.addfile(info)
    return add


def _zip_symlink(z: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("train/cat/link.png")
    info.external_attr = (0o120777 << 16)  # S_IFLNK
    z.writestr(info, "/etc/passwd")


def lying_zip(entries: Entries, member: str, real: int) -> bytes:
    """A zip whose ``member`` holds ``real`` zero bytes but declares a size of 100 (its headers rewritten)."""
    blob = bytearray(zip_of({**entries, member: b"\0" * real}))
    size = real.to_bytes(4, "little")
    # the local header (offset 22) and the central directory entry (offset 24) hold the uncompressed size
    name = member.encode()
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (at := blob.find(sig, start)) >= 0:
            start = at + 4
            name_at = at + (30 if sig == b"PK\x03\x04" else 46)
            if blob[name_at:name_at + len(name)] == name and blob[at + off:at + off + 4] == size:
                blob[at + off:at + off + 4] = (100).to_bytes(4, "little")
    return bytes(blob)


def bad_archives(bomb_bytes: int) -> dict[str, tuple[bytes, str, int, str]]:
    """Every refused kind: name -> (archive, file name, status, words the message holds). ``bomb_bytes``:
    the declared size of the bomb's member (over the service's unpacked limit)."""
    good = image_folder()
    one_class = {k: v for k, v in good.items() if "/dog/" not in k}
    other_test = {k.replace("test/dog/", "test/bird/"): v for k, v in good.items()}
    return {
        "traversal": (tar_of({**good, "../evil.png": png(1)}), "t.tar.gz", 400, "'..'"),
        "traversal-zip": (zip_of({**good, "train/../../evil.png": png(1)}), "t.zip", 400, "'..'"),
        "absolute": (tar_of({**good, "/tmp/evil.png": png(1)}), "a.tar.gz", 400, "absolute path"),
        "symlink": (tar_of(good, extra=_special("train/cat/link.png", tarfile.SYMTYPE, "/etc/passwd")),
                    "s.tar.gz", 400, "symbolic link"),
        "hardlink": (tar_of(good, extra=_special("train/cat/hard.png", tarfile.LNKTYPE, "train/cat/0.png")),
                     "h.tar", 400, "hard link"),
        "device": (tar_of(good, extra=_special("train/cat/dev.png", tarfile.CHRTYPE)), "d.tar.gz", 400, "device"),
        "symlink-zip": (zip_of(good, extra=_zip_symlink), "s.zip", 400, "symbolic link"),
        "bomb": (tar_of({**good, "train/cat/zeros.png": b"\0" * bomb_bytes}), "b.tar.gz", 400, "more than"),
        "bomb-lying-zip": (lying_zip(good, "train/cat/zeros.png", 1 << 20), "l.zip", 400, ""),
        "corrupt-image": (tar_of({**good, "train/cat/bad.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 20}),
                          "c.tar.gz", 400, "cannot be decoded"),
        "one-class": (tar_of(one_class), "o.tar.gz", 400, "at least 2"),
        "classes-differ": (tar_of(other_test), "d.tar.gz", 400, "differ"),
        "no-test": (tar_of({k: v for k, v in good.items() if k.startswith("train/")}), "n.tar.gz", 400, "no test"),
        "not-an-archive": (b"hello" * 100, "x.tar.gz", 400, "not a .tar"),
        "truncated": (tar_of(good)[:300], "cut.tar.gz", 400, ""),
    }
