"""The users' own data sets through the API (FastAPI's TestClient): uploads checked before anything is
unpacked, refused whole with one 4xx and nothing left on disk, owned, listed, deletable; model references
checked before a job is queued; and one tiny job run on an uploaded set by an in-process worker."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from amc.data.archives import folder_bytes
from amc.service.app import create_app
from amc.service.auth import create_token
from amc.service.config import ServiceConfig
from amc.service.store import Store
from tests.service_archives import bad_archives, image_folder, png, tar_of, zip_of
from tests.service_models import REF, tiny_resnet

pytestmark = pytest.mark.timeout(240)
UNPACKED = 4 << 20  # the service's unpacked-bytes limit in these tests
JOB = {"budget": "macs=0.8", "method": "optuna", "episodes": 2, "finetune_epochs": 0, "calib_images": 16,
       "eval_images": 16, "latency_runs": 1, "sensitivity_ratios": [0.5], "batch_size": 32, "onnx": False}


@pytest.fixture
def service(tmp_path: Path):
    config = ServiceConfig(root=tmp_path / "svc", checkpoints=tmp_path / "none", max_upload_bytes=8 << 20,
                           max_dataset_bytes=256 << 10, max_dataset_unpacked_bytes=UNPACKED,
                           max_image_pixels=64 * 64, datasets={})
    config.root.mkdir()
    store = Store(config.database)
    alice, bob = create_token(store, "alice")[1], create_token(store, "bob")[1]
    with TestClient(create_app(config, store=store)) as client:
        yield client, config, {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}


def upload(client: TestClient, headers: dict, blob: bytes, name: str = "set.tar.gz"):
    return client.post("/api/v1/datasets", files={"file": (name, blob)}, headers=headers)


def weights(model: torch.nn.Module) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def upload_weights(client: TestClient, headers: dict, model: torch.nn.Module, ref: str) -> str:
    r = client.post("/api/v1/uploads", files={"file": ("w.safetensors", weights(model))}, data={"model": ref},
                    headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def leftovers(config: ServiceConfig) -> list[Path]:
    """Temporary files or folders of uploads (refused or finished) under the data sets' root."""
    root = config.user_datasets
    return [p for p in root.rglob(".*")] if root.exists() else []


@pytest.mark.parametrize("pack", ["tar.gz", "tar", "zip"])
def test_an_image_folder_uploads_lists_and_deletes(service, pack: str) -> None:
    client, config, alice, bob = service
    entries = image_folder(("cat", "dog", "owl"), top="pets/")  # under one top folder, three classes
    blob = zip_of(entries) if pack == "zip" else tar_of(entries, gz=pack == "tar.gz")
    r = upload(client, alice, blob, f"pets.{pack}")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["classes"] == ["cat", "dog", "owl"] and ds["images"] == {"train": 36, "test": 24}
    assert ds["input_shape"] == [3, 16, 16] and ds["archive_bytes"] == len(blob) and ds["name"] == f"pets.{pack}"
    folder = config.user_datasets / "alice" / ds["id"]
    assert sorted(p.name for p in (folder / "train").iterdir()) == ["cat", "dog", "owl"]
    assert [d["id"] for d in client.get("/api/v1/datasets", headers=alice).json()] == [ds["id"]]
    assert client.get("/api/v1/datasets", headers=bob).json() == []
    assert client.get(f"/api/v1/datasets/{ds['id']}", headers=alice).json() == ds
    assert client.delete(f"/api/v1/datasets/{ds['id']}", headers=alice).status_code == 204
    assert not folder.exists() and client.get("/api/v1/datasets", headers=alice).json() == []
    assert client.get(f"/api/v1/datasets/{ds['id']}", headers=alice).status_code == 404
    assert leftovers(config) == []


def test_every_unsafe_or_bad_archive_is_one_4xx_and_leaves_nothing(service) -> None:
    client, config, alice, _ = service
    kept = upload(client, alice, tar_of(image_folder()))
    assert kept.status_code == 201, kept.text
    before = folder_bytes(config.user_datasets)
    for name, (blob, filename, status, words) in bad_archives(UNPACKED + 1).items():
        r = upload(client, alice, blob, filename)
        assert r.status_code == status, (name, r.status_code, r.text)
        detail = r.json()["detail"]
        assert words in detail and "\n" not in detail and "Traceback" not in detail, (name, detail)
        assert str(config.root) not in detail, (name, detail)
    assert folder_bytes(config.user_datasets) == before  # nothing of a refused archive stays
    assert leftovers(config) == []
    assert [d["id"] for d in client.get("/api/v1/datasets", headers=alice).json()] == [kept.json()["id"]]


def test_limits_on_upload_size_entries_and_pixels(service, tmp_path: Path) -> None:
    client, config, alice, _ = service
    big = tar_of({f"train/c{i % 2}/{i}.png": png(i) + bytes(range(256)) * 4 for i in range(400)}, gz=False)
    assert len(big) > config.max_dataset_bytes
    r = upload(client, alice, big, "big.tar")
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    r = upload(client, alice, tar_of({**image_folder(), "train/cat/huge.png": png(1, size=100)}))
    assert r.status_code == 400 and "100x100" in r.json()["detail"]
    r = upload(client, alice, tar_of(image_folder()), "set.rar")
    assert r.status_code == 415
    from amc.data.archives import ArchiveError, ArchiveLimits, unpack_image_folder

    here = tmp_path / "unpack"
    here.mkdir()
    archive = here / "many.tar.gz"
    archive.write_bytes(tar_of(image_folder()))
    with pytest.raises(ArchiveError, match="more than 10 entries"):
        unpack_image_folder(archive, here / "out", ArchiveLimits(entries=10))
    with pytest.raises(ArchiveError, match="over 10 for one image"):
        unpack_image_folder(archive, here / "out", ArchiveLimits(member_bytes=10))
    assert sorted(p.name for p in here.iterdir()) == ["many.tar.gz"]
    assert folder_bytes(config.user_datasets) == 0 and leftovers(config) == []


def test_another_users_data_set_is_403(service) -> None:
    client, _, alice, bob = service
    ds = upload(client, alice, tar_of(image_folder())).json()["id"]
    assert client.get(f"/api/v1/datasets/{ds}", headers=bob).status_code == 403
    assert client.delete(f"/api/v1/datasets/{ds}", headers=bob).status_code == 403
    wid = upload_weights(client, bob, tiny_resnet(num_classes=2), REF)
    r = client.post("/api/v1/jobs", json={**JOB, "upload": wid, "model": REF, "data": ds}, headers=bob)
    assert r.status_code == 403 and "another user" in r.json()["detail"]
    r = client.post("/api/v1/jobs", json={**JOB, "upload": wid, "model": REF, "data": "nope"}, headers=bob)
    assert r.status_code == 400 and "unknown data set 'nope'" in r.json()["detail"]
    assert client.get(f"/api/v1/datasets/{ds}", headers=alice).status_code == 200


def test_model_references_are_checked_before_queuing(service) -> None:
    import timm
    import torchvision

    client, _, alice, _ = service
    ds = upload(client, alice, tar_of(image_folder(size=32))).json()["id"]
    queue = client.app.state.queue

    def submit(model: str | None, wid: str) -> tuple[int, str]:
        r = client.post("/api/v1/jobs", json={**JOB, "upload": wid, "model": model, "data": ds}, headers=alice)
        return r.status_code, r.json().get("detail", "")

    tv = upload_weights(client, alice, torchvision.models.get_model("shufflenet_v2_x0_5", num_classes=2),
                        "torchvision:shufflenet_v2_x0_5")
    tm = upload_weights(client, alice, timm.create_model("test_efficientnet", num_classes=2), "timm:test_efficientnet")
    ten = upload_weights(client, alice, tiny_resnet(), REF)  # ten outputs
    assert submit("torchvision:shufflenet_v2_x0_5", tv)[0] == 201
    assert submit("timm:test_efficientnet", tm)[0] == 201
    assert queue.pending() == 2
    for model, wid, words in (
        ("torchvision:no_such_net", tv, "torchvision has no model 'no_such_net'"),
        ("timm:no_such_net", tm, "timm has no model 'no_such_net'"),
        ("zoo:resnet20", tv, "does not fit"),  # the weights are another architecture's
        ("torchvision:mobilenet_v2", tv, "does not fit"),
        (REF, ten, "outputs 10 class scores, the data set has 2 classes"),
        (None, tv, "give model"),
    ):
        status, detail = submit(model, wid)
        assert status == 400 and words in detail and "\n" not in detail, (model, status, detail)
    assert queue.pending() == 2  # nothing refused was queued


def test_a_job_runs_on_an_uploaded_data_set(service) -> None:
    from amc.service.worker import Worker

    client, config, alice, _ = service
    ds = upload(client, alice, zip_of(image_folder(("a", "b", "c"), train=8, test=8))).json()["id"]
    torch.manual_seed(0)
    wid = upload_weights(client, alice, tiny_resnet(num_classes=3), REF)
    r = client.post("/api/v1/jobs", json={**JOB, "upload": wid, "model": REF, "data": ds}, headers=alice)
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    assert client.delete(f"/api/v1/datasets/{ds}", headers=alice).status_code == 409  # a queued job uses it
    Worker(config, store=client.app.state.store, queue=client.app.state.queue, name="w").execute(jid)
    job = client.get(f"/api/v1/jobs/{jid}", headers=alice).json()
    assert job["state"] == "done", job["error"]
    report = client.get(f"/api/v1/jobs/{jid}/files/report.md", headers=alice)
    assert report.status_code == 200 and REF in report.text  # the report of this model
    recipe = client.get(f"/api/v1/jobs/{jid}/files/recipe.yaml", headers=alice).text
    assert REF in recipe and ds in recipe  # the model reference and the data set the recipe records
    assert client.delete(f"/api/v1/datasets/{ds}", headers=alice).status_code == 204
