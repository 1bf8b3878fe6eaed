"""Task plugins in the service: the operator registers task factories by name (config, ``AMC_TASKS``), the
registry lists them, a job names one instead of data (an unknown name is a 422), and a worker builds the task
by calling its factory; users never upload code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from amc.service.app import create_app
from amc.service.auth import create_token
from amc.service.config import ServiceConfig
from amc.service.store import Store
from amc.service.worker import Worker
from tests.task_models import make_yolo

pytestmark = pytest.mark.timeout(300)
PLUGINS = {"detection-demo": "tests.task_models:make_detection_task"}
JOB = {"checkpoint": "yolo", "model": "tests.task_models:make_yolo", "task": "detection-demo", "budget": "macs=0.5",
       "method": "optuna", "episodes": 2, "finetune_epochs": 1.0, "sensitivity_ratios": [0.5], "latency_rounds": 1,
       "latency_runs": 2}


@pytest.fixture
def service(tmp_path: Path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    torch.save(make_yolo().state_dict(), ckpts / "yolo.pt")
    config = ServiceConfig(root=tmp_path / "svc", checkpoints=ckpts, tasks=PLUGINS, device="cpu")
    config.root.mkdir()
    store = Store(config.database)
    token = create_token(store, "alice")[1]
    with TestClient(create_app(config, store=store)) as client:
        yield client, config, store, {"Authorization": f"Bearer {token}"}


def test_the_registry_lists_the_task_plugins(service):
    client, _, _, auth = service
    body = client.get("/api/v1/registry", headers=auth).json()
    assert body["tasks"] == ["detection-demo"]
    assert body["descriptions"]["tasks"]["detection-demo"] == PLUGINS["detection-demo"]


@pytest.mark.parametrize(("change", "words"), [
    ({"task": "no-such-task"}, "unknown task 'no-such-task'; registered: detection-demo"),
    ({"data": "my-upload"}, "give data or task, not both"),
    ({"budget": "size=0.5"}, "fine-grained pruning"),
])
def test_bad_task_jobs_are_a_422(service, change, words):
    client, _, _, auth = service
    r = client.post("/api/v1/jobs", json={**JOB, **change}, headers=auth)
    assert r.status_code == 422 and words in r.text


def test_a_task_job_runs_on_a_worker(service):
    client, config, store, auth = service
    r = client.post("/api/v1/jobs", json=JOB, headers=auth)
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    Worker(config, store=store).execute(jid)  # in this process: the queue's consumer would call the same
    job = client.get(f"/api/v1/jobs/{jid}", headers=auth).json()
    assert job["state"] == "done", job["error"]
    run = config.runs / jid
    assert (run / "recipe.yaml").is_file() and "## Task: detection" in (run / "report.md").read_text()


def test_amc_tasks_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("AMC_TASKS", "a=pkg.mod:make_a, b=pkg.other:factory")
    assert ServiceConfig.from_env(root=tmp_path).tasks == {"a": "pkg.mod:make_a", "b": "pkg.other:factory"}
    monkeypatch.setenv("AMC_TASKS", "broken")
    from amc.task import TaskError

    with pytest.raises(TaskError, match=r"name=pkg\.module:function"):
        ServiceConfig.from_env(root=tmp_path)
