"""What a job is (``JobSpec``), how its progress reads (``ProgressTracker``), and the one call into the
pipeline (``run_job``).

``JobSpec`` is derived from the options model (``amc.options.CompressConfig``): its options are the
model's leaf fields (``JobOptions``: the same types, defaults, bounds, descriptions and registry-backed
choices) less what the service sets itself (``SERVICE_SET``), with the service's own defaults and limits
(``SERVICE_LIMITS``); beside them, the service-only fields (the weights: ``checkpoint`` or ``upload``,
``model``, ``data`` or ``task`` (a registered task plugin), and the quick-job slice: ``train_limit``,
``protocol``, ``heldout``). A job's options become a ``CompressConfig`` in one call (``JobSpec.compress_config``).

``run_job(spec, weights, splits, run_dir, progress)`` is the only place the service calls the
compression pipeline: it builds the model (``job_model``: ``amc.models.resolve_model`` for the data's
classes and input shape) and calls ``amc.pipeline.compress_model``. The pipeline reports progress as message strings
("profile: ...", "sensitivity: ...", "trial 3/30" or "episode 2/10", "search (...): ...",
"finetune: ..."); ``ProgressTracker.update`` turns them into a stage, done / total and an ETA.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

from amc.errors import AmcError
from amc.options import CompressConfig, choices_of, leaf_fields
from amc.progress import parse as parse_progress
from amc.service import choices

STAGES = ("queued", "data", "profile", "sensitivity", "search", "finetune", "export", "done")
_NEXT = {"profile": "sensitivity", "sensitivity": "search", "search": "finetune", "finetune": "export"}
_STAGE_OF = {"trial": "search", "episode": "search", "finetune step": "finetune", "finetune epoch": "finetune"}


# Options a client may not set: the service gives each job its own Optuna study in the job's run folder.
SERVICE_SET = ("storage", "study")

# The service's own defaults and limits for the options it shares with ``CompressConfig``: CPU-friendly
# defaults (a quick job: 30 trials, one finetune epoch), and upper bounds so that one request cannot
# hold a worker for days or ask for a batch no GPU holds.
SERVICE_LIMITS: dict[str, dict[str, Any]] = {
    "episodes": {"default": 30, "le": 10_000},
    "warmup": {"le": 10_000},
    "finetune_epochs": {"default": 1.0, "le": 1000},
    "lr": {"le": 10},
    "batch_size": {"le": 8192},
    "round_to": {"le": 256},
    "recovery_steps": {"le": 10_000},
    "latency_runs": {"le": 10_000},
    "latency_fit_rounds": {"le": 20},
    "latency_search_rounds": {"le": 10},
    "sensitivity_ratios": {"max_length": 16},
    "sparsities": {"max_length": 32},
}


def job_options() -> dict[str, Any]:
    """The options a job may set: ``CompressConfig``'s leaf fields (type, default, bounds, registry-backed
    choices, description), less ``SERVICE_SET``, with ``SERVICE_LIMITS`` applied on top."""
    out: dict[str, Any] = {}  # name -> (annotation, FieldInfo), as create_model takes them
    for name, (annotation, info) in leaf_fields(CompressConfig).items():
        if name in SERVICE_SET:
            continue
        limits = SERVICE_LIMITS.get(name)
        out[name] = (annotation, FieldInfo.merge_field_infos(info, Field(**limits)) if limits else info)
    return out


JobOptions = create_model("JobOptions", __config__=ConfigDict(extra="forbid"), **job_options())


class JobSpec(JobOptions):  # type: ignore[misc, valid-type]
    """One compression job: the options of ``CompressConfig`` a client may set (``JobOptions``, derived
    from it), plus where the weights and data come from and the data slice of quick jobs."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = Field(None, description="a registered checkpoint name (GET /api/v1/registry)")
    upload: str | None = Field(None, description="an uploaded weights id (POST /api/v1/uploads)")
    model: str | None = Field(None, description="architecture reference (default: guessed from the checkpoint)")
    data: str = Field("cifar10", description="a registered data set name (GET /api/v1/registry) or the id of "
                                            "one of your uploaded data sets (POST /api/v1/datasets)")
    train_limit: int | None = Field(None, ge=64, description="use only this many train images (quick jobs)")
    protocol: Literal["auto", "test-halves", "heldout"] = Field(
        "auto", description="what the search scores on: test-halves (the test set split once into a validation "
                            "half for the search and a final-test half for the reported numbers), heldout (train "
                            "images held out), auto (test-halves unless heldout is given)")
    heldout: int | None = Field(None, ge=16, description="held-out train images for the search rewards "
                                                         "(the heldout protocol)")
    task: str | None = Field(None, description="a registered task plugin's name (GET /api/v1/registry): the model "
                                               "is scored, calibrated and finetuned by it instead of data")

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: str) -> str:
        from amc.budget import Budget

        try:
            b = Budget.parse(v)  # kind and range checked there
        except AmcError as e:
            raise ValueError(str(e)) from None
        return str(b)  # stored in one spelling

    @model_validator(mode="after")
    def _source(self) -> JobSpec:
        if (self.checkpoint is None) == (self.upload is None):
            raise ValueError("give exactly one of checkpoint (a registered name) and upload (an uploaded weights id)")
        if self.protocol == "test-halves" and self.heldout is not None:
            raise ValueError("protocol test-halves scores on the test set's validation half; heldout does not apply")
        if self.task is not None and (self.data != JobSpec.model_fields["data"].default or self.train_limit is not None
                                      or self.heldout is not None):
            raise ValueError("give data or task, not both (a task brings its own evaluate and calibration)")
        if self.train_limit is not None and self.heldout is not None and self.heldout >= self.train_limit:
            raise ValueError(f"heldout ({self.heldout}) must be below train_limit ({self.train_limit})")
        config = self.compress_config(None)  # the options model's own checks (the parts' validators), up front
        if self.task is not None and config.resolved_granularity != "channel":
            raise ValueError("fine-grained pruning (size budgets) scores the classification task only; give a task "
                             "job a macs=, params= or latency= budget")
        return self

    def compress_config(self, storage: str | None, study: str | None = None) -> CompressConfig:
        """The pipeline's options: this job's, and the service's Optuna ``storage`` and ``study``."""
        try:
            return CompressConfig(**self.model_dump(include=set(JobOptions.model_fields)), storage=storage,
                                  study=study)
        except AmcError as e:
            raise ValueError(str(e)) from None


def job_schema() -> dict[str, Any]:
    """``JobSpec``'s JSON schema with the registries' current names as the ``enum`` of each field that
    names one (method, criterion, granularity...), and their one-line help where there is one (``GET
    /api/v1/options``; the page builds its form from it)."""
    schema = JobSpec.model_json_schema()
    for name, (_, info) in job_options().items():
        found = choices_of(info)
        if found is not None:
            prop = schema["properties"][name]
            names = list(found.names())
            # an optional field's names go on its non-null branch: null stays valid
            branch = next((b for b in prop.get("anyOf", ()) if b.get("type") != "null"), prop)
            branch["enum"] = names
            prop["enum_descriptions"] = choices.describe(found.noun, names)
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
    unit: str | None = None  # what the stage counts: "trial", "episode", "sensitivity", "finetune step"
    stage_done: int = 0  # the stage's units done (``done`` / ``total`` stay the search's trials)
    stage_total: int | None = None
    eta: float | None = None  # the seconds left that the stage's last counted message gave
    eta_at: float = 0.0  # when it gave them

    def enter(self, stage: str) -> None:
        """The job moved to ``stage`` (its count and ETA start afresh; the search's trials stay)."""
        if stage != self.stage:
            self.stage, self.stage_started, self.stage_done0 = stage, time.time(), self.done
            self.unit, self.stage_done, self.stage_total, self.eta = None, 0, None, None

    def update(self, msg: str) -> None:
        self.message = msg
        step = parse_progress(msg)  # "trial 3/8 (best 71.2%), ETA 4m", "sensitivity 6/25 (...), ETA 1m20s"
        if step is not None:
            stage = _STAGE_OF.get(step.stage, step.stage)
            if stage != self.stage:
                self.enter(stage)
                self.stage_done0 = step.done - 1
            self.unit, self.stage_done, self.stage_total = step.stage, step.done, step.total
            if stage == "search":  # the job's own count: trials or episodes
                self.done, self.total = step.done, step.total
            self.eta, self.eta_at = step.eta_s, time.time()
            return
        head = msg.split(":", 1)[0].split(" ", 1)[0]
        if head in _NEXT:  # "profile: ..." ends the profile stage: the next one starts
            self.enter(_NEXT[head])
        elif msg.startswith("data"):
            self.enter("profile")

    def eta_s(self) -> float | None:
        """Seconds left in the stage: the last message's ETA less the time since, else this attempt's pace
        (None outside a counted stage)."""
        if not self.stage_total or self.stage_done >= self.stage_total:
            return None
        if self.eta is not None:
            return max(0.0, self.eta - (time.time() - self.eta_at))
        if self.stage != "search" or self.done <= self.stage_done0:
            return None
        pace = (time.time() - self.stage_started) / (self.done - self.stage_done0)
        return pace * (self.stage_total - self.stage_done)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["elapsed_s"] = time.time() - self.started
        d["eta_s"] = self.eta_s()
        return d


def load_job_data(source: Any, spec: JobSpec, device: Any) -> tuple[Any, Any]:
    """The job's splits and the record of its protocol (``amc.data.holdout``): by default the test set
    (after ``test_limit``) halved into the search's validation half and the final-test half, as
    ``amc compress`` does; with ``heldout`` (or ``protocol="heldout"``) train images held out instead.
    ``source`` is an ``amc.service.datasets.JobData``: a registered set loads as CIFAR-10, an
    uploaded ImageFolder with its own classes (``amc.data.load_images``)."""
    from amc.data import load_cifar10, load_images, subset
    from amc.data.holdout import split_for_search

    data = load_cifar10(source.path) if source.kind == "registered" else load_images(source.path)
    if spec.train_limit is not None or spec.test_limit is not None:
        data = subset(data, train=spec.train_limit, test=spec.test_limit, seed=spec.seed)
    return split_for_search(data, spec.protocol, spec.heldout, device)


def job_model(spec: JobSpec, weights: Path, num_classes: int, input_shape: tuple[int, ...]) -> tuple[Any, str]:
    """The job's dense model and its reference: ``spec.model`` (or the zoo name guessed from a registered
    checkpoint's file name) built by ``amc.models.resolve_model`` for ``num_classes`` outputs and the data's
    input shape, with the weights loaded (weights only; one ``CheckpointError`` if they do not fit)."""
    from amc.models import resolve_arch, resolve_model

    ref = resolve_arch(spec.model, weights)
    return resolve_model(ref, num_classes=num_classes, weights=weights, input_size=input_shape), ref


def study_storage(run_dir: Path) -> str:
    """The job's Optuna storage: one SQLite file in its run folder, so a resumed job finds its study."""
    return f"sqlite:///{(run_dir / 'study.db').resolve()}"


def check_job_model(model_ref: str | None, uploaded: bool, weights: Path, num_classes: int,
                    input_shape: tuple[int, ...]) -> None:
    """Before a job is queued: its model reference (``JobSpec.model``; required with ``uploaded``
    weights, else guessed from a registered checkpoint's file name) builds, the weights fit it (weights only), one image
    of the data's shape goes through it, and its output width is the data's class count; one
    ``CheckpointError`` naming the first problem otherwise."""
    import torch

    from amc.errors import CheckpointError
    from amc.models import KNOWN_FORMS, resolve_arch, resolve_model

    if model_ref is None and uploaded:
        raise CheckpointError(f"give model: the architecture of the uploaded weights ({', '.join(KNOWN_FORMS)})")
    ref = resolve_arch(model_ref, weights)
    model = resolve_model(ref, num_classes=None, weights=weights, input_size=input_shape)  # the weights' classes
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except Exception as e:  # the architecture cannot take the data's images
        raise CheckpointError(f"model {ref} cannot take the data's {'x'.join(map(str, input_shape))} images: "
                              f"{type(e).__name__}: {str(e)[:200]}") from None
    width = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() == 2 else None
    if width != num_classes:
        raise CheckpointError(f"model {ref} with these weights outputs {width if width is not None else 'no'} "
                              f"class scores, the data set has {num_classes} classes")


def run_job(spec: JobSpec, weights: Path, splits: Any, run_dir: Path, progress: Callable[[str], None],
            record: Any = None) -> Any:
    """Run one compression into ``run_dir`` (the pipeline call; see the module doc); ``record`` (the
    data protocol's ``ProtocolRecord``) goes into the recipe. ``splits`` may be an ``amc.Task`` (a job
    naming a task plugin): the model is then built as its reference gives it and checked on the task."""
    from amc.pipeline import compress_model
    from amc.recipe import DataInfo
    from amc.task import Task

    config = spec.compress_config(study_storage(run_dir), study=f"job-{run_dir.name}")  # one study per job
    if isinstance(splits, Task):
        from amc.models import resolve_arch, resolve_model

        ref = resolve_arch(spec.model, weights)
        dense = resolve_model(ref, weights=weights).to(splits.device).eval()
        splits.check_model(dense)
        return compress_model(dense, splits, config, run_dir, progress=progress, ref=ref, checkpoint=weights,
                              input_shape=splits.shape, data=DataInfo(source=f"task: {spec.task} ({splits.metric})"))
    info = None if record is None else DataInfo(source=spec.data, protocol=record.protocol,
                                                 val_sha256=record.val_sha256, test_sha256=record.test_sha256)
    dense, ref = job_model(spec, weights, splits.num_classes, splits.input_shape)
    return compress_model(dense, splits, config, run_dir, progress=progress, ref=ref, checkpoint=weights, data=info)
