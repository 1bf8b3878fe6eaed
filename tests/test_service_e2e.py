"""The service end to end: ``amc serve`` and ``amc worker`` as real subprocesses on 127.0.0.1.

A tiny job (a width-8/16 ResNet-8 named by reference, 512 train images, 64-image rewards, no finetune)
is submitted with uploaded weights, polled to completion, and its recipe re-applied bit for bit; a
worker SIGKILLed mid-search leaves the job to a second worker, which finishes the same Optuna study
with every completed trial kept; two workers on one PostgreSQL server (jobs table and huey queue)
share the queue and run every job exactly once, even when the queue delivers a job twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from amc.service.auth import create_token  # noqa: E402
from amc.service.store import Store  # noqa: E402
from tests import pg  # noqa: E402
from tests.conftest import CIFAR  # noqa: E402
from tests.service_models import REF, tiny_resnet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.timeout(290), pytest.mark.skipif(not CIFAR.exists(), reason="shared data set not found")]
TINY = {"model": REF, "budget": "macs=0.8", "method": "optuna", "finetune_epochs": 0, "train_limit": 512,
        "heldout": 128, "test_limit": 128, "calib_images": 64, "eval_images": 64, "latency_runs": 3,
        "sensitivity_ratios": [0.5], "batch_size": 128}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A server and its workers as subprocesses sharing one service folder (see the module doc)."""

    def __init__(self, root: Path, db_url: str | None = None, queue_url: str | None = None) -> None:
        self.root, self.port = root, free_port()
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "AMC_SERVICE_ROOT": str(root),
                    "AMC_SERVICE_STALE_S": "2", "AMC_SERVICE_HEARTBEAT_S": "0.5", "OMP_NUM_THREADS": "1"}
        for name, url in (("AMC_SERVICE_DB", db_url), ("AMC_SERVICE_QUEUE", queue_url)):
            if url:
                self.env[name] = url
        self.procs: list[subprocess.Popen] = []
        root.mkdir(parents=True, exist_ok=True)
        store = Store(db_url or f"sqlite:///{root / 'service.db'}")
        self.token = create_token(store, "alice")[1]
        store.engine.dispose()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, *args: str) -> subprocess.Popen:
        with open(self.root / f"{args[0]}-{len(self.procs)}.log", "wb") as log:  # the child keeps its own copy
            p = subprocess.Popen([sys.executable, "-m", "amc.cli", *args], cwd=ROOT, env=self.env, stdout=log,
                                 stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def serve(self) -> None:
        self.start("serve", "--host", "127.0.0.1", "--port", str(self.port), "--max-upload-mb", "4")
        t0 = time.time()
        while time.time() - t0 < 90:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise AssertionError("server did not start: " + (self.root / "serve-0.log").read_text()[-2000:])

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def service(tmp_path: Path):
    svc = Service(tmp_path / "svc")
    svc.serve()
    try:
        yield svc
    finally:
        svc.stop()


def tiny_weights() -> bytes:
    from safetensors.torch import save

    torch.manual_seed(0)
    return save({k: v.contiguous() for k, v in tiny_resnet().state_dict().items()})


def submit(client: httpx.Client, weights: bytes, **spec: object) -> dict:
    up = client.post("/api/v1/uploads", files={"file": ("tiny.safetensors", weights)}, data={"model": REF})
    assert up.status_code == 201, up.text
    r = client.post("/api/v1/jobs", json={**TINY, **spec, "upload": up.json()["id"]})
    assert r.status_code == 201, r.text
    return r.json()


def wait_for(client: httpx.Client, jid: str, done: callable, timeout_s: float) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        job = client.get(f"/api/v1/jobs/{jid}").json()
        if done(job):
            return job
        assert job["state"] not in ("failed", "cancelled"), (job["state"], job["error"])
        time.sleep(0.25)
    raise AssertionError(f"job {jid} did not get there in {timeout_s} s: {job}")


def test_submit_poll_download_and_reapply_bit_for_bit(service: Service, tmp_path: Path) -> None:
    from safetensors.torch import load

    from amc.recipe import apply_recipe, load_recipe

    weights = tiny_weights()
    service.start("worker", "--device", "cpu")
    with service.client() as c:
        job = submit(c, weights, episodes=4)
        seen = set()
        job = wait_for(c, job["id"], lambda j: seen.add(j["progress"]["stage"]) or j["state"] == "done", 240)
        assert job["progress"]["done"] == 4 and job["progress"]["total"] == 4 and job["attempts"] == 1
        assert "search" in seen or "finetune" in seen or "export" in seen  # the stage moved while we looked
        trials = c.get(f"/api/v1/jobs/{job['id']}/trials").json()["trials"]
        assert sum(t["state"] == "COMPLETE" for t in trials) == 4
        files = {f["path"] for f in c.get(f"/api/v1/jobs/{job['id']}/files").json()}
        assert {"recipe.yaml", "report.md", "trials.csv", "model.onnx", "pruned/model.safetensors"} <= files
        base = f"/api/v1/jobs/{job['id']}/files/"
        (tmp_path / "recipe.yaml").write_bytes(c.get(base + "recipe.yaml").content)
        pruned = load(c.get(base + "pruned/model.safetensors").content)
        assert "<table>" in c.get(f"/api/v1/jobs/{job['id']}/report").text
    (tmp_path / "tiny.safetensors").write_bytes(weights)
    recipe = load_recipe(tmp_path / "recipe.yaml", checkpoint=tmp_path / "tiny.safetensors")
    model, _ = apply_recipe(recipe, tmp_path / "tiny.safetensors")
    rebuilt = model.state_dict()
    assert set(rebuilt) == set(pruned)
    for k, v in pruned.items():
        assert torch.equal(rebuilt[k], v), k


def test_killed_worker_job_finishes_on_another_with_no_trial_lost(service: Service) -> None:
    n = 30
    first = service.start("worker", "--device", "cpu", "--name", "first")
    with service.client() as c:
        job = submit(c, tiny_weights(), episodes=n, onnx=False)
        jid = job["id"]

        def some_trials(j: dict) -> bool:
            return j["progress"]["trials_complete"] >= 3

        wait_for(c, jid, some_trials, 200)
        first.send_signal(signal.SIGKILL)
        first.wait()
        before = {t["number"]: t for t in c.get(f"/api/v1/jobs/{jid}/trials").json()["trials"]
                  if t["state"] == "COMPLETE"}
        assert len(before) >= 3
        assert c.get(f"/api/v1/jobs/{jid}").json()["state"] == "running"  # nobody has noticed yet
        service.start("worker", "--device", "cpu", "--name", "second")
        job = wait_for(c, jid, lambda j: j["state"] == "done", 240)
        assert job["attempts"] == 2 and job["worker"] == "second"
        after = {t["number"]: t for t in c.get(f"/api/v1/jobs/{jid}/trials").json()["trials"]}
        for number, t in before.items():  # every completed trial is still there, unchanged
            assert after[number]["state"] == "COMPLETE" and after[number]["reward"] == t["reward"]
        assert sum(t["state"] == "COMPLETE" for t in after.values()) == n
        assert job["progress"]["done"] == n


def test_cancel_a_running_job(service: Service) -> None:
    service.start("worker", "--device", "cpu")
    with service.client() as c:
        jid = submit(c, tiny_weights(), episodes=200, onnx=False)["id"]
        wait_for(c, jid, lambda j: j["progress"]["trials_complete"] >= 1, 200)
        assert c.post(f"/api/v1/jobs/{jid}/cancel").json()["state"] == "cancelling"
        t0 = time.time()
        while c.get(f"/api/v1/jobs/{jid}").json()["state"] != "cancelled":
            assert time.time() - t0 < 30
            time.sleep(0.2)
        assert c.get(f"/api/v1/jobs/{jid}").json()["progress"]["done"] < 200


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with pg.server_url() as url:
        yield url


def worker_lines(root: Path, what: str) -> list[str]:
    """The job ids of the workers' "job ID: <what>" log lines, all workers together."""
    ids = []
    for log in sorted(root.glob("worker-*.log")):
        for line in log.read_text().splitlines():
            rest = line.partition(" amc.worker INFO job ")[2]
            if rest and rest.split(": ", 1)[1].startswith(what):
                ids.append(rest.split(":", 1)[0])
    return ids


def test_two_workers_share_a_postgres_queue_and_run_each_job_once(pg_url: str, tmp_path: Path) -> None:
    from amc.service.queue import JobQueue

    n = 4
    url = pg.fresh_database(pg_url, f"amc_svc_{os.getpid()}")  # jobs, tokens and huey's tables, empty
    svc = Service(tmp_path / "svc", db_url=url, queue_url=url)
    svc.env.update(AMC_SERVICE_STALE_S="120", AMC_SERVICE_HEARTBEAT_S="1")  # no recovery sweep requeues here
    svc.serve()
    try:
        for name in ("w0", "w1"):
            svc.start("worker", "--device", "cpu", "--name", name)
        t0 = time.time()  # both consumers up before the jobs go in, so that both can take some
        while not all(": ready" in (svc.root / f"worker-{i}.log").read_text() for i in (1, 2)):
            assert time.time() - t0 < 90, "workers did not start"
            assert all(p.poll() is None for p in svc.procs), "a process died"
            time.sleep(0.3)
        spec = {"method": "sensitivity", "episodes": 1, "onnx": False, "latency_runs": 1}
        with svc.client() as c:
            ids = [submit(c, tiny_weights(), **spec)["id"] for _ in range(n)]
            queue = JobQueue(url)
            for jid in ids:  # each job delivered a second time, as a recovery sweep racing a live worker would
                queue.submit(jid)
            t0 = time.time()
            while True:
                jobs = {j["id"]: j for j in c.get("/api/v1/jobs").json()}
                skipped = worker_lines(svc.root, "skipped")
                if all(jobs[j]["state"] == "done" for j in ids) and len(skipped) == n and queue.pending() == 0:
                    break
                assert not [j for j in ids if jobs[j]["state"] in ("failed", "cancelled")], jobs
                assert time.time() - t0 < 240, f"not all done: {[j['state'] for j in jobs.values()]}"
                time.sleep(0.5)
            queue.huey.storage.close()
    finally:
        svc.stop()
    claimed = worker_lines(svc.root, "claimed")
    assert sorted(claimed) == sorted(ids)  # every job ran, and once: one claim each over both workers
    assert sorted(skipped) == sorted(ids)  # every second delivery arrived and was refused
    assert all(jobs[j]["attempts"] == 1 for j in ids)
    assert {jobs[j]["worker"] for j in ids} == {"w0", "w1"}  # the queue was shared: both took jobs
    for jid in ids:
        assert (svc.root / "runs" / jid / "recipe.yaml").is_file()

