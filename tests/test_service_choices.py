"""The service reads every list of choices from the project's registries, at request time.

``GET /api/v1/registry`` and ``GET /api/v1/options`` list what the registries hold; a searcher and a
channel criterion registered while the service runs are listed and accepted by ``JobSpec`` at once,
and refused (422) once unregistered; a job runs end to end in a worker for every registered searcher.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from amc.registry import Registry
from amc.search.registry import SEARCHERS
from amc.service.app import create_app
from amc.service.auth import create_token
from amc.service.config import ServiceConfig
from amc.service.jobs import JobSpec
from amc.service.store import Store
from tests.service_models import REF, tiny_resnet

pytestmark = pytest.mark.timeout(240)
SPEC = {"checkpoint": "tiny", "model": REF, "budget": "macs=0.8", "episodes": 2, "finetune_epochs": 0}


def _channel_criteria() -> Any:
    from amc.options import channel_criteria

    return channel_criteria()


def _add(reg: Any, name: str, obj: Any) -> None:
    if isinstance(reg, Registry):
        reg.register(name, obj, help=f"{name}: registered by a test")
    else:
        reg[name] = obj


def _remove(reg: Any, name: str) -> None:
    if isinstance(reg, Registry):
        reg.unregister(name)
    else:
        assert isinstance(reg, MutableMapping)
        reg.pop(name, None)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    config = ServiceConfig(root=tmp_path / "svc", checkpoints=tmp_path / "ckpts", datasets={"cifar10": tmp_path})
    config.root.mkdir()
    store = Store(config.database)
    headers = {"Authorization": f"Bearer {create_token(store, 'alice')[1]}"}
    with TestClient(create_app(config, store=store)) as client:
        yield client, headers


@pytest.fixture
def plugin() -> Iterator[tuple[str, str]]:
    """A searcher and a channel criterion registered for one test, then unregistered."""
    searcher, criterion = "test_searcher", "test_criterion"

    def factory(evaluator: Any, spec: Any, run_dir: Any) -> Any:
        raise AssertionError("not run here")

    def score(model: Any, group: Any) -> Any:
        raise AssertionError("not run here")

    _add(SEARCHERS, searcher, factory)
    _add(_channel_criteria(), criterion, score)
    try:
        yield searcher, criterion
    finally:
        _remove(SEARCHERS, searcher)
        _remove(_channel_criteria(), criterion)


def test_registry_lists_what_the_registries_hold(service) -> None:
    from amc.budget import BUDGET_KINDS
    from amc.evaluator import RECOVERIES
    from amc.importance import WEIGHT_CRITERIA

    client, headers = service
    reg = client.get("/api/v1/registry", headers=headers).json()
    assert reg["methods"] == [*SEARCHERS, "sensitivity"]
    assert reg["channel_criteria"] == list(_channel_criteria())
    assert reg["weight_criteria"] == list(WEIGHT_CRITERIA)
    assert set(reg["criteria"]) == set(_channel_criteria()) | set(WEIGHT_CRITERIA)
    assert reg["budget_kinds"] == list(BUDGET_KINDS)
    assert reg["recoveries"] == list(RECOVERIES)
    assert reg["checkpoints"] == [] and reg["datasets"] == ["cifar10"]
    assert reg["granularities"] == ["fine", "channel"] and "acc" in reg["rewards"]
    for key in ("methods", "criteria", "channel_criteria", "weight_criteria", "granularities", "rewards",
                "budget_kinds", "recoveries"):
        assert list(reg["descriptions"][key]) == reg[key]  # every name with its (maybe empty) help
    assert reg["descriptions"]["methods"]["sensitivity"]


def test_options_schema_carries_bounds_defaults_and_current_choices(service) -> None:
    client, headers = service
    schema = client.get("/api/v1/options", headers=headers).json()
    props = schema["properties"]
    assert schema["additionalProperties"] is False
    assert set(props) == set(JobSpec.model_fields)
    assert (props["episodes"]["default"], props["episodes"]["maximum"]) == (30, 10_000)
    assert (props["batch_size"]["default"], props["batch_size"]["maximum"]) == (256, 8192)
    assert props["finetune_epochs"]["default"] == 1.0
    assert props["method"]["enum"] == [*SEARCHERS, "sensitivity"]
    assert set(props["criterion"]["enum"]) >= {"l1", "l2", "magnitude"}
    assert props["score_on"]["enum"] == ["auto", "masked", "physical"]
    assert props["granularity"]["anyOf"][0]["enum"] == ["fine", "channel"]  # and null: the default
    assert all(p.get("description") for n, p in props.items() if n in ("budget", "episodes", "method"))


def test_jobspec_is_the_options_model_with_the_services_limits() -> None:
    from pydantic import ValidationError

    from amc.options import leaf_fields
    from amc.service.jobs import SERVICE_SET

    leaves = leaf_fields()
    options = set(leaves) - set(SERVICE_SET)
    assert set(JobSpec.model_fields) - options == {"checkpoint", "upload", "model", "data", "train_limit",
                                                   "protocol", "heldout", "task"}
    for name in options:  # one declaration: the options model's type and help
        assert JobSpec.model_fields[name].description == leaves[name][1].description, name
    spec = JobSpec.model_validate(SPEC)
    config = spec.compress_config("sqlite:///study.db", study="job-1")
    assert config.flat() == {**{k: getattr(spec, k) for k in options}, "storage": "sqlite:///study.db",
                             "study": "job-1"}
    for name, value in (("episodes", 10_001), ("batch_size", 8193), ("finetune_epochs", 1001.0), ("lr", 11.0),
                        ("round_to", 257), ("latency_fit_rounds", 21), ("sensitivity_ratios", [0.5] * 17)):
        with pytest.raises(ValidationError, match=name):  # the service's limits over the options model's
            JobSpec.model_validate({**SPEC, name: value})
    for name in SERVICE_SET:  # the service's to set: a client's value is refused
        with pytest.raises(ValidationError, match=name):
            JobSpec.model_validate({**SPEC, name: "postgresql://elsewhere/db"})


def test_a_searcher_and_a_criterion_registered_later_are_listed_and_accepted(service, plugin) -> None:
    client, headers = service
    searcher, criterion = plugin
    reg = client.get("/api/v1/registry", headers=headers).json()
    assert searcher in reg["methods"] and criterion in reg["channel_criteria"] and criterion in reg["criteria"]
    props = client.get("/api/v1/options", headers=headers).json()["properties"]
    assert searcher in props["method"]["enum"] and criterion in props["criterion"]["enum"]
    spec = JobSpec.model_validate({**SPEC, "method": searcher, "criterion": criterion})
    assert (spec.method, spec.criterion) == (searcher, criterion)


@pytest.mark.parametrize(("field", "name"), [("method", "test_searcher"), ("criterion", "test_criterion")])
def test_a_name_not_registered_is_a_422(service, field: str, name: str) -> None:
    client, headers = service
    r = client.post("/api/v1/jobs", json={**SPEC, field: name}, headers=headers)
    assert r.status_code == 422, r.text
    assert f"unknown {field} {name!r}" in r.json()["detail"]
    assert client.get("/api/v1/jobs", headers=headers).json() == []


@pytest.mark.slow
@pytest.mark.parametrize("method", list(SEARCHERS))
def test_a_job_runs_in_a_worker_for_every_searcher(tmp_path: Path, monkeypatch, cifar, method: str) -> None:
    """Every searcher the registry holds at collection time (amc, optuna, and any added since) runs a
    tiny job end to end through the worker: done, with its trials readable through the API's reader."""
    from safetensors.torch import save_file

    import amc.data
    from amc.service.api.jobs import read_trials
    from amc.service.queue import JobQueue
    from amc.service.worker import Worker

    monkeypatch.setattr(amc.data, "load_cifar10", lambda path: cifar)  # the session's copy, not a re-read
    config = ServiceConfig(root=tmp_path / "svc", checkpoints=tmp_path / "ckpts", datasets={"cifar10": tmp_path},
                           device="cpu", heartbeat_s=0.5)
    config.root.mkdir()
    config.checkpoints.mkdir()
    weights = {k: v.contiguous() for k, v in tiny_resnet().state_dict().items()}
    save_file(weights, config.checkpoints / "tiny.safetensors")
    spec = JobSpec.model_validate({**SPEC, "method": method, "train_limit": 256, "heldout": 64, "test_limit": 64,
                                   "calib_images": 64, "eval_images": 64, "latency_runs": 1, "onnx": False,
                                   "sensitivity_ratios": [0.5], "batch_size": 64})
    store = Store(config.database)
    worker = Worker(config, store=store, queue=JobQueue(config.queue), name="test")
    jid = store.add_job("alice", spec.model_dump())
    worker.execute(jid)
    job = store.get(jid)
    assert job is not None and job.state == "done", job.error if job else None
    run_dir = config.runs / jid
    assert (run_dir / "recipe.yaml").exists()
    trials = read_trials(run_dir, "macs")
    assert len([t for t in trials if t["state"] == "COMPLETE"]) >= spec.episodes
    assert all(t["cost"] is None or 0 < t["cost"] <= 1 for t in trials)
