"""The service's API through an HTTP client (FastAPI's TestClient): auth, validation, uploads, paths.

No worker runs here: jobs stay queued (the end-to-end tests in test_service_e2e.py run them).
"""

from __future__ import annotations

import io
import pickle
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from amc.service.app import create_app
from amc.service.auth import create_token
from amc.service.config import ServiceConfig
from amc.service.jobs import ProgressTracker
from amc.service.store import Store
from tests.conftest import MODELS, make_tiny_resnet

pytestmark = pytest.mark.timeout(120)
CKPT = MODELS / "resnet20_dense.pt"
QUICK = {"checkpoint": "resnet20_dense", "budget": "macs=0.5", "episodes": 2, "finetune_epochs": 0}


@pytest.fixture
def service(tmp_path: Path):
    if not CKPT.exists():
        pytest.skip("shared resnet20 checkpoint not found")
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    (ckpts / "resnet20_dense.pt").symlink_to(CKPT)
    config = ServiceConfig(root=tmp_path / "svc", checkpoints=ckpts, max_upload_bytes=2 << 20)
    config.root.mkdir()
    store = Store(config.database)
    alice, bob = create_token(store, "alice")[1], create_token(store, "bob")[1]
    app = create_app(config, store=store)
    with TestClient(app) as client:
        yield client, config, {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}


def _leftovers(config: ServiceConfig) -> list[Path]:
    return [p for p in config.uploads.rglob("*") if p.is_file()] if config.uploads.exists() else []


def test_health_needs_no_token_and_everything_else_does(service) -> None:
    client, _, _, _ = service
    assert client.get("/health").json()["status"] == "ok"
    for path in ("/api/v1/jobs", "/api/v1/registry", "/api/v1/jobs/abc/files/recipe.yaml"):
        r = client.get(path)
        assert r.status_code == 401 and "token" in r.json()["detail"]
    r = client.get("/api/v1/jobs", headers={"Authorization": "Bearer amc_not-a-token"})
    assert r.status_code == 401 and "invalid" in r.json()["detail"]
    assert client.get("/openapi.json").json()["info"]["title"] == "amc-service"


def test_every_response_says_the_servers_own_time(service) -> None:
    client, _, alice, _ = service
    for r in (client.get("/health"), client.get("/api/v1/jobs", headers=alice), client.get("/api/v1/jobs")):
        name, dur = r.headers["server-timing"].split(";dur=")
        assert name == "app" and 0.0 <= float(dur) < 60_000.0


def test_submit_list_cancel_resume_and_another_users_job(service) -> None:
    client, _config, alice, bob = service
    r = client.post("/api/v1/jobs", json=QUICK, headers=alice)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["state"] == "queued" and job["owner"] == "alice"
    assert client.app.state.queue.pending() == 1  # one task on the huey queue
    assert [j["id"] for j in client.get("/api/v1/jobs", headers=alice).json()] == [job["id"]]
    assert client.get("/api/v1/jobs", headers=bob).json() == []
    for method, path in (("get", ""), ("get", "/trials"), ("get", "/files"), ("get", "/files/recipe.yaml"),
                         ("post", "/cancel"), ("post", "/resume")):
        r = getattr(client, method)(f"/api/v1/jobs/{job['id']}{path}", headers=bob)
        assert r.status_code == 403 and "another user" in r.json()["detail"], (path, r.text)
    assert client.get("/api/v1/jobs/ffffffffffff", headers=alice).status_code == 404
    assert client.post(f"/api/v1/jobs/{job['id']}/resume", headers=alice).status_code == 409
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=alice).json()["state"] == "cancelled"
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=alice).status_code == 409
    assert client.post(f"/api/v1/jobs/{job['id']}/resume", headers=alice).json()["state"] == "queued"


@pytest.mark.parametrize(("change", "status", "words"), [
    ({"budget": "macs=1.5"}, 422, "budget fraction must be in (0, 1]"),
    ({"budget": "flops=0.5"}, 422, "unknown budget kind"),
    ({"budget": "half"}, 422, "KIND=FRACTION"),
    ({"episodes": 0}, 422, "episodes"),
    ({"method": "magic"}, 422, "method"),
    ({"checkpoint": None}, 422, "exactly one of checkpoint"),
    ({"checkpoint": "nope"}, 400, "unknown checkpoint 'nope'"),
    ({"model": "no_such_net"}, 400, "unknown model 'no_such_net'"),
    ({"model": "vgg8"}, 400, ""),  # resnet20 weights do not fit vgg8
    ({"data": "imagenet"}, 400, "unknown data set"),
    ({"colour": "red"}, 422, "colour"),
    ({"score_on": "gpu"}, 422, "score_on"),
    ({"latency_fit_rounds": -1}, 422, "latency_fit_rounds"),
])
def test_bad_specs_are_one_clear_4xx(service, change: dict, status: int, words: str) -> None:
    client, _config, alice, _ = service
    r = client.post("/api/v1/jobs", json={**QUICK, **change}, headers=alice)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail
    assert client.get("/api/v1/jobs", headers=alice).json() == []  # nothing half-made


def _upload(client: TestClient, headers: dict, name: str, data: bytes, model: str | None = None):
    fields = {"model": model} if model else None
    return client.post("/api/v1/uploads", files={"file": (name, data)}, data=fields, headers=headers)


def test_uploads_weights_only_and_bounded(service) -> None:
    client, config, alice, bob = service
    from safetensors.torch import save

    tiny = make_tiny_resnet()
    blob = save({k: v.contiguous() for k, v in tiny.state_dict().items()})
    r = _upload(client, alice, "tiny.safetensors", blob)
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["tensors"] == len(tiny.state_dict())
    buf = io.BytesIO()
    torch.save(torch.load(CKPT, weights_only=True), buf)  # a weights-only state dict, as a user saves one
    r = _upload(client, alice, "resnet20.pt", buf.getvalue(), model="resnet20")
    assert r.status_code == 201, r.text
    ok = client.post("/api/v1/jobs", json={**QUICK, "checkpoint": None, "upload": r.json()["id"], "model": "resnet20"},
                     headers=alice)
    assert ok.status_code == 201, ok.text
    r = client.post("/api/v1/jobs", json={**QUICK, "checkpoint": None, "upload": r.json()["id"], "model": "resnet20"},
                    headers=bob)
    assert r.status_code == 400 and "unknown upload" in r.json()["detail"]  # not bob's
    kept = _leftovers(config)
    assert len(kept) == 2

    class Evil:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    bad = {
        "corrupt.safetensors": (blob[: len(blob) // 2], 400, "corrupt"),
        "flipped.pt": (buf.getvalue()[:-300] + b"\x00" * 300, 400, "corrupt"),
        "code.pt": (pickle.dumps({"w": Evil()}), 400, "cannot read checkpoint"),
        "weights.pkl": (b"whatever", 415, "must be .safetensors"),
        "big.pt": (b"\x00" * (3 << 20), 413, "over the limit"),
    }
    for name, (data, status, words) in bad.items():
        r = _upload(client, alice, name, data)
        assert r.status_code == status, (name, r.text)
        assert words in r.json()["detail"], (name, r.json())
    r = _upload(client, alice, "tiny.safetensors", blob, model="resnet20")  # weights of another model
    assert r.status_code == 400
    assert _leftovers(config) == kept  # every refused upload left nothing behind


@pytest.mark.parametrize("cut", ["length", "header", "data"])
def test_truncated_safetensors_upload_is_one_clear_400(service, tmp_path: Path, cut: str) -> None:
    from safetensors.torch import save

    from amc.errors import CheckpointError
    from amc.models import read_state_dict

    client, config, alice, _ = service
    blob = save({k: v.contiguous() for k, v in make_tiny_resnet().state_dict().items()})
    header = 8 + int.from_bytes(blob[:8], "little")  # safetensors: u64 header length, JSON header, data
    keep = {"length": 5, "header": header // 2, "data": header + (len(blob) - header) // 2}[cut]
    cut_blob = blob[:keep]
    path = tmp_path / "cut.safetensors"
    path.write_bytes(cut_blob)
    with pytest.raises(CheckpointError, match="corrupt, truncated"):  # not safetensors' own error
        read_state_dict(path)
    r = _upload(client, alice, "cut.safetensors", cut_blob, model="tests.service_models:tiny_resnet")
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "cannot read checkpoint cut.safetensors: corrupt, truncated" in detail
    assert "\n" not in detail and "Traceback" not in detail and str(config.uploads) not in detail
    assert _leftovers(config) == []  # nothing half-written stays behind


def test_paths_cannot_leave_the_run_folder(service) -> None:
    client, config, alice, _ = service
    job = client.post("/api/v1/jobs", json=QUICK, headers=alice).json()
    run = config.runs / job["id"]
    (run / "pruned").mkdir(parents=True)
    (run / "recipe.yaml").write_text("version: 1\n")
    (run / "study.db").write_text("x")
    (config.root / "secret.txt").write_text("secret")
    (run / "link.txt").symlink_to(config.root / "secret.txt")
    base = f"/api/v1/jobs/{job['id']}/files/"
    assert client.get(base + "recipe.yaml", headers=alice).text == "version: 1\n"
    for path in ("..%2F..%2Fsecret.txt", "pruned/..%2F..%2F..%2Fsecret.txt", "%2Fetc%2Fpasswd", "link.txt",
                 "..%5C..%5Csecret.txt"):
        r = client.get(base + path, headers=alice)
        assert r.status_code in (400, 404), (path, r.status_code)
        assert "secret" != r.text
        assert "leaves the job's run folder" in r.json()["detail"] or "has no file" in r.json()["detail"]
    assert client.get(base + "study.db", headers=alice).status_code == 404
    listed = [f["path"] for f in client.get(f"/api/v1/jobs/{job['id']}/files", headers=alice).json()]
    assert listed == ["recipe.yaml"]


def test_progress_messages_become_stages() -> None:
    p = ProgressTracker(stage="data")
    p.update("data")
    assert p.stage == "profile"
    p.update("profile: resnet20, 272,474 params")
    assert p.stage == "sensitivity"
    p.update("sensitivity: 76 points in 3.0 s")
    assert p.stage == "search"
    p.update("trial 3/10")
    assert (p.stage, p.done, p.total) == ("search", 3, 10)
    p.update("trial 4/10")
    assert p.eta_s() is not None and p.eta_s() >= 0
    p.update("search (optuna): 10 episodes in 9.0 s")
    assert p.stage == "finetune"
    p.update("finetune: 80.00% -> 85.00% in 1.0 s")
    assert p.stage == "export"


def test_counted_messages_give_each_stage_its_count_unit_and_eta() -> None:
    p = ProgressTracker(stage="profile")
    p.update("sensitivity 6/25 (layer1.0.conv1), ETA 1m20s")
    assert (p.stage, p.unit, p.stage_done, p.stage_total) == ("sensitivity", "sensitivity", 6, 25)
    assert 0 <= p.eta_s() <= 80  # the message's ETA, less the moments since
    p.update("sensitivity: 25 points in 9.0 s")
    assert (p.stage, p.unit, p.stage_total, p.eta_s()) == ("search", None, None, None)
    p.update("trial 3/8 (best 71.2%), ETA 11s")
    assert (p.stage, p.unit, p.stage_done, p.done, p.total) == ("search", "trial", 3, 3, 8) and p.eta_s() <= 11
    p.update("trial 8/8 (best 72.0%)")
    p.update("search (optuna): 8 episodes in 9.0 s")
    p.update("finetune step 10/18 (loss 1.568), ETA 12s")
    assert (p.stage, p.unit, p.stage_done, p.stage_total) == ("finetune", "finetune step", 10, 18)
    assert (p.done, p.total) == (8, 8)  # the job's own count stays the search's trials
    assert p.as_dict()["unit"] == "finetune step"
    p.enter("done")
    assert (p.stage, p.stage_total, p.eta_s(), p.done, p.total) == ("done", None, None, 8, 8)


def test_a_revoked_token_stops_working_within_the_token_cache_time(service) -> None:
    client, config, alice, bob = service
    assert client.get("/api/v1/me", headers=alice).json() == {"user": "alice"}  # read, then cached
    store = client.app.state.store
    tid = next(t["id"] for t in store.list_tokens() if t["user"] == "alice")
    assert store.revoke_token(tid)  # as `amc token revoke` does, from another process
    time.sleep(config.token_cache_s + 0.1)
    r = client.get("/api/v1/me", headers=alice)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert client.get("/api/v1/me", headers=bob).json() == {"user": "bob"}  # the others still work


def test_token_cache_keeps_valid_tokens_only_for_its_time() -> None:
    from amc.service.auth import TokenCache

    off = TokenCache(0)
    off.put("amc_x", "alice")
    assert off.get("amc_x") is None  # ttl 0: every request reads the table
    cache = TokenCache(0.2)
    assert cache.get("amc_x") is None
    cache.put("amc_x", "alice")
    assert cache.get("amc_x") == "alice" and cache.get("amc_y") is None
    time.sleep(0.25)
    assert cache.get("amc_x") is None



def test_jobs_search_on_the_test_sets_validation_half_by_default(monkeypatch, cifar) -> None:
    """The honest protocol: a job without ``heldout`` scores its search on the test set's validation
    half and reports on the other half (recorded with both hashes); ``heldout`` keeps the carve-out."""
    import amc.data
    from amc.data.holdout import index_hash, split_halves
    from amc.service.datasets import CIFAR_SHAPE, JobData
    from amc.service.jobs import JobSpec, load_job_data

    monkeypatch.setattr(amc.data, "load_cifar10", lambda path: cifar)  # the session's copy, not a re-read
    spec = JobSpec.model_validate({**QUICK, "train_limit": 256, "test_limit": 200})
    source = JobData("cifar10", "registered", Path("cifar"), 10, CIFAR_SHAPE)
    splits, record = load_job_data(source, spec, "cpu")
    assert record.protocol == "test-halves" and record.val_images + record.test_images == 200
    assert len(splits.heldout_y) == record.val_images and len(splits.test_y) == record.test_images
    assert len(splits.train_y) == 256  # train stays whole
    v, t = split_halves(amc.data.subset(cifar, train=256, test=200, seed=0).test_y)
    assert (record.val_sha256, record.test_sha256) == (index_hash(v), index_hash(t))  # the fixed split
    carved, rec2 = load_job_data(source, spec.model_copy(update={"heldout": 64}), "cpu")
    assert rec2.protocol == "heldout" and len(carved.heldout_y) == 64 and len(carved.test_y) == 200
    with pytest.raises(ValueError, match="heldout does not apply"):
        JobSpec.model_validate({**QUICK, "protocol": "test-halves", "heldout": 64})
