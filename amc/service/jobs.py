"""What a job is (``JobSpec``), how its progress reads (``ProgressTracker``), and the one call into the
pipeline (``run_job``).

``run_job(spec, weights, data_path, run_dir, progress, device)`` is the only place the service calls
the compression pipeline; it calls ``amc.pipeline.compress`` and would re-point at the public
``amc.compress(model, ...)`` API in one place. The pipeline reports progress as message strings
("profile: ...", "sensitivity: ...", "trial 3/30" or "episode 2/10", "search (...): ...",
"finetune: ..."); ``ProgressTracker.update`` turns them into a stage, done / total and an ETA.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from amc.errors import AmcError
from amc.service import choices

STAGES = ("queued", "data", "profile", "sensitivity", "search", "finetune", "export", "done")
_NEXT = {"profile": "sensitivity", "sensitivity": "search", "search": "finetune", "finetune": "export"}
_COUNT = re.compile(r"^(trial|episode) (\d+)/(\d+)")


class JobSpec(BaseModel):
    """One compression job: the options of ``amc compress``, plus the data slice for quick jobs."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = Field(None, description="a registered checkpoint name (GET /api/v1/registry)")
    upload: str | None = Field(None, description="an uploaded weights id (POST /api/v1/uploads)")
    model: str | None = Field(None, description="architecture reference (default: guessed from the checkpoint)")
    data: str = Field("cifar10", description="a registered data set name")
    budget: str = Field("macs=0.5", description="KIND=FRACTION, KIND in size, macs, params, latency")
    method: str = Field("optuna", description="a searcher, or sensitivity (GET /api/v1/registry: methods)",
                        json_schema_extra={"choices": "methods"})
    granularity: Literal["fine", "channel"] | None = None
    episodes: int = Field(30, ge=1, le=10_000, description="AMC episodes or Optuna trials")
    seed: int = Field(0, ge=0)
    finetune_epochs: float = Field(1.0, ge=0, le=1000)
    lr: float = Field(0.01, gt=0, le=10)
    distill: float = Field(0.0, ge=0, le=1)
    batch_size: int = Field(256, ge=1, le=8192)
    calib_images: int = Field(5120, ge=1)
    eval_images: int | None = Field(None, ge=1)
    test_limit: int | None = Field(None, ge=1, description="test images for the final numbers")
    train_limit: int | None = Field(None, ge=64, description="use only this many train images (quick jobs)")
    protocol: Literal["auto", "test-halves", "heldout"] = Field(
        "auto", description="what the search scores on: test-halves (the test set split once into a validation "
                            "half for the search and a final-test half for the reported numbers), heldout (train "
                            "images held out), auto (test-halves unless heldout is given)")
    heldout: int | None = Field(None, ge=16, description="held-out train images for the search rewards "
                                                         "(the heldout protocol)")
    upper: float | None = Field(None, gt=0, lt=1, description="highest per-layer ratio (default 0.9 for channel "
                                                               "pruning, 0.98 for fine-grained)")
    criterion: str = Field("l2", description="a channel or weight criterion (GET /api/v1/registry: criteria)",
                           json_schema_extra={"choices": "criteria"})
    round_to: int = Field(8, ge=1, le=256)
    latency_runs: int = Field(50, ge=1, le=10_000)
    latency_fit_rounds: int = Field(4, ge=0, le=20, description="latency budget: rounds that tighten the chosen "
                                                                "policy until it meets the budget by measurement")
    score_on: Literal["auto", "masked", "physical"] = Field(
        "auto", description="channel rewards scored on the masked dense model or the physically smaller one "
                            "(auto: physical on the CPU)")
    sensitivity_ratios: tuple[float, ...] = Field((0.2, 0.4, 0.6, 0.8), min_length=1, max_length=16,
                                                  description="channel ratios scanned per layer")
    onnx: bool = True

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: str) -> str:
        from amc.budget import Budget

        try:
            b = Budget.parse(v)  # kind and range checked there
        except AmcError as e:
            raise ValueError(str(e)) from None
        return str(b)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return choices.check("methods", v)  # read at validation time: a searcher registered later is accepted

    @field_validator("criterion")
    @classmethod
    def _criterion(cls, v: str) -> str:
        return choices.check("criteria", v)

    @field_validator("sensitivity_ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0 < r < 1 for r in v):
            raise ValueError(f"sensitivity ratios must be in (0, 1), got {list(v)}")
        return v

    @model_validator(mode="after")
    def _source(self) -> JobSpec:
        if (self.checkpoint is None) == (self.upload is None):
            raise ValueError("give exactly one of checkpoint (a registered name) and upload (an uploaded weights id)")
        if self.protocol == "test-halves" and self.heldout is not None:
            raise ValueError("protocol test-halves scores on the test set's validation half; heldout does not apply")
        if self.train_limit is not None and self.heldout is not None and self.heldout >= self.train_limit:
            raise ValueError(f"heldout ({self.heldout}) must be below train_limit ({self.train_limit})")
        self.compress_config(None)  # the pipeline's own checks, up front
        return self

    def compress_config(self, storage: str | None, study: str | None = None) -> Any:
        from amc.pipeline import CompressConfig

        try:
            return CompressConfig(budget=self.budget, method=self.method, granularity=self.granularity,
                                  episodes=self.episodes, seed=self.seed, finetune_epochs=self.finetune_epochs,
                                  lr=self.lr, distill=self.distill, batch_size=self.batch_size,
                                  calib_images=self.calib_images, eval_images=self.eval_images, upper=self.upper,
                                  criterion=self.criterion, round_to=self.round_to, test_limit=self.test_limit,
                                  latency_runs=self.latency_runs, latency_fit_rounds=self.latency_fit_rounds,
                                  score_on=self.score_on, onnx=self.onnx, storage=storage, study=study,
                                  sensitivity_ratios=self.sensitivity_ratios)
        except AmcError as e:
            raise ValueError(str(e)) from None


def job_schema() -> dict[str, Any]:
    """``JobSpec``'s JSON schema with the current choices of each registry-backed field as its ``enum``
    (the page builds its form from it; ``GET /api/v1/options``)."""
    schema = JobSpec.model_json_schema()
    lists = choices.catalog()
    for prop in schema["properties"].values():
        kind = prop.get("choices")
        if kind in lists:
            prop["enum"] = list(lists[kind])
            prop["enum_descriptions"] = lists[kind]
    return schema


@dataclass
class ProgressTracker:
    """Structured progress from the pipeline's messages (see the module doc)."""

    stage: str = "queued"
    done: int = 0
    total: int | None = None
    message: str = ""
    best: float | None = None  # the best feasible reward so far (Optuna)
    trials_complete: int = 0
    started: float = field(default_factory=time.time)  # this attempt
    stage_started: float = field(default_factory=time.time)
    stage_done0: int = 0  # ``done`` when this attempt entered the stage (a resumed search starts above 0)

    def _enter(self, stage: str) -> None:
        if stage != self.stage:
            self.stage, self.stage_started, self.stage_done0 = stage, time.time(), self.done

    def update(self, msg: str) -> None:
        self.message = msg
        m = _COUNT.match(msg)
        if m:
            if self.stage != "search":
                self._enter("search")
                self.stage_done0 = int(m.group(2)) - 1
            self.done, self.total = int(m.group(2)), int(m.group(3))
            return
        head = msg.split(":", 1)[0].split(" ", 1)[0]
        if head in _NEXT:  # "profile: ..." ends the profile stage: the next one starts
            self._enter(_NEXT[head])
        elif msg.startswith("data"):
            self._enter("profile")

    def eta_s(self) -> float | None:
        """Seconds left in the search, from this attempt's pace (None outside the search)."""
        if self.stage != "search" or not self.total or self.done <= self.stage_done0:
            return None
        pace = (time.time() - self.stage_started) / (self.done - self.stage_done0)
        return pace * (self.total - self.done)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["elapsed_s"] = time.time() - self.started
        d["eta_s"] = self.eta_s()
        return d


def load_job_data(data_path: Path, spec: JobSpec, device: Any) -> tuple[Any, Any]:
    """The job's splits and the record of its protocol (``amc.data.holdout``): by default the test set
    (after ``test_limit``) halved into the search's validation half and the final-test half, as
    ``amc compress`` does; with ``heldout`` (or ``protocol="heldout"``) train images held out instead."""
    from amc.data import load_cifar10, subset
    from amc.data.holdout import split_for_search

    data = load_cifar10(data_path)
    if spec.train_limit is not None or spec.test_limit is not None:
        data = subset(data, train=spec.train_limit, test=spec.test_limit, seed=spec.seed)
    return split_for_search(data, spec.protocol, spec.heldout, device)


def study_storage(run_dir: Path) -> str:
    """The job's Optuna storage: one SQLite file in its run folder, so a resumed job finds its study."""
    return f"sqlite:///{(run_dir / 'study.db').resolve()}"


def run_job(spec: JobSpec, weights: Path, splits: Any, run_dir: Path, progress: Callable[[str], None],
            record: Any = None) -> Any:
    """Run one compression into ``run_dir`` (the pipeline call; see the module doc); ``record`` (the
    data protocol's ``ProtocolRecord``) goes into the recipe."""
    from amc.pipeline import compress
    from amc.recipe import DataInfo

    config = spec.compress_config(study_storage(run_dir), study=f"job-{run_dir.name}")  # one study per job
    info = None if record is None else DataInfo(source=spec.data, protocol=record.protocol,
                                                 val_sha256=record.val_sha256, test_sha256=record.test_sha256)
    return compress(weights, spec.model, splits, config, run_dir, progress=progress, data=info)
