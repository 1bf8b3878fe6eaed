"""Data-set uploads against the service's API, in process (FastAPI's TestClient, no worker): every
refused kind of archive from ``tests/service_archives.py`` (traversal, absolute path, links, a device
entry, compression bombs, a corrupt image, one class, classes that differ, no test split, not an archive,
a truncated one, an oversized upload, an image over the pixel limit), and accepted ones (tar.gz, tar and
zip of a tiny set, and a 5-class 64x64 set of 600 noise PNGs). Counts what was tried, refused (by
status) and accepted, and the bytes left under the data sets' folder by the refused ones (the folder's
bytes after each refused upload minus before, and any temporary entry left). Writes
reports/service_uploads.json; reports/service.md quotes it.

    nice .venv/bin/python benchmarks/service_uploads.py
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

from amc.data.archives import folder_bytes
from benchmarks.harness import parser, write_json
from tests.service_archives import bad_archives, image_folder, png, tar_of, zip_of

UNPACKED = 64 << 20


def noise_set(classes: int = 5, train: int = 100, test: int = 20, size: int = 64) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    entries = {}
    for c in range(classes):
        for split, n in (("train", train), ("test", test)):
            for i in range(n):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
                entries[f"set/{split}/class{c}/{i}.png"] = buf.getvalue()
    return tar_of(entries)


def main() -> None:
    args = parser(__doc__, data=False, device=False).parse_args()
    from fastapi.testclient import TestClient

    from amc.service.app import create_app
    from amc.service.auth import create_token
    from amc.service.config import ServiceConfig
    from amc.service.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        config = ServiceConfig(root=Path(tmp) / "svc", checkpoints=Path(tmp) / "none", datasets={},
                               max_dataset_bytes=16 << 20, max_dataset_unpacked_bytes=UNPACKED,
                               max_image_pixels=256 * 256)
        config.root.mkdir()
        store = Store(config.database)
        headers = {"Authorization": f"Bearer {create_token(store, 'alice')[1]}"}
        refused = dict(bad_archives(UNPACKED + 1))
        refused["oversized"] = (tar_of({f"train/c/{i}.png": bytes(4096) for i in range(4200)}, gz=False),
                                "big.tar", 413, "over the limit")
        refused["pixels"] = (tar_of({**image_folder(), "train/cat/huge.png": png(1, size=300)}), "p.tar.gz", 400,
                             "pixels")
        accepted = {"tiny.tar.gz": tar_of(image_folder()), "tiny.tar": tar_of(image_folder(), gz=False),
                    "tiny.zip": zip_of(image_folder()), "noise-5x64px.tar.gz": noise_set()}
        rows = []
        with TestClient(create_app(config, store=store)) as client:
            for name, (blob, filename, status, words) in refused.items():
                before = folder_bytes(config.user_datasets)
                t0 = time.perf_counter()
                r = client.post("/api/v1/datasets", files={"file": (filename, blob)}, headers=headers)
                wall = time.perf_counter() - t0
                temps = [p for p in config.user_datasets.rglob(".*")] if config.user_datasets.exists() else []
                detail = r.json().get("detail", "")
                rows.append({"archive": name, "bytes": len(blob), "status": r.status_code,
                             "expected": status, "detail": detail, "names_the_problem": words in detail,
                             "wall_s": round(wall, 3),
                             "left_on_disk_bytes": folder_bytes(config.user_datasets) - before,
                             "temporary_entries_left": len(temps)})
            for name, blob in accepted.items():
                t0 = time.perf_counter()
                r = client.post("/api/v1/datasets", files={"file": (name, blob)}, headers=headers)
                wall = time.perf_counter() - t0
                body = r.json()
                rows.append({"archive": name, "bytes": len(blob), "status": r.status_code, "expected": 201,
                             "detail": "" if r.status_code == 201 else body.get("detail", ""),
                             "wall_s": round(wall, 3), "images": body.get("images"),
                             "classes": len(body.get("classes", []))})
    bad = [r for r in rows if r["expected"] != 201]
    good = [r for r in rows if r["expected"] == 201]
    report = {
        "archives_tried": len(rows),
        "refused": sum(r["status"] >= 400 for r in bad),
        "refused_as_expected": sum(r["status"] == r["expected"] for r in bad),
        "accepted": sum(r["status"] == 201 for r in good),
        "accepted_expected": len(good),
        "bytes_left_by_refused": sum(r["left_on_disk_bytes"] for r in bad),
        "temporary_entries_left_by_refused": max(r["temporary_entries_left"] for r in bad),
        "rows": rows,
        "ended": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    write_json(Path(args.out) / "service_uploads.json", report, indent=2, default=None)
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
    for r in rows:
        print(f"{r['archive']:>22} {r['bytes']:>10,} B  {r['status']}  {r['wall_s']:6.3f} s  {r['detail'][:90]}")


if __name__ == "__main__":
    main()
