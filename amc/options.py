"""The one options model of a compression: ``CompressConfig``, every option declared once.

Each option is one pydantic field (its type, default, bounds and description, which is the help
text) in one of the config's parts (``pruning``, ``search``, ``evaluation``, ``finetune``,
``sensitivity``, ``latency``, ``export``). What else speaks of options derives from these fields:
``amc.compress(**options)`` takes them as keywords, ``amc compress`` / ``amc search`` generate their
flags from them (``amc.commands.options``), the service derives its request model from
``leaf_fields(CompressConfig)``, and the evaluator's own config is built from them
(``CompressConfig.eval_config``). Names that are choices (method, criterion, granularity, reward,
recovery) are read from their registries when a value is validated or a parser is built
(``Choices``), never copied.

Lifecycle: ``CompressConfig(budget="macs=0.5", method="optuna", episodes=30, calib_images=512)``
(flat keyword arguments: leaf names are unique across the parts and are the options' public names;
parts may also be given whole, ``search=SearchOptions(...)``) -> validated once, frozen ->
``config.episodes`` / ``config.search.episodes`` read it -> ``config.replace(episodes=5)`` for a
changed copy, ``config.flat()`` for the record (summary.json). Bad input is one ``AmcError`` line
naming the option (``OptionError``; a malformed budget stays a ``BudgetError``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import core_schema

from amc.errors import AmcError, BudgetError
from amc.registry import Registry

if TYPE_CHECKING:
    from amc.budget import Budget
    from amc.evaluator import EvalConfig


class OptionError(AmcError):
    """An option with a bad value, or an unknown option."""


class _Invalid(ValueError):
    """A validator's ValueError that remembers which ``AmcError`` class the user should see."""

    def __init__(self, message: str, error: type[AmcError] = OptionError) -> None:
        super().__init__(message)
        self.error = error


# -- choices read from the registries ------------------------------------------------------------
def method_names() -> list[str]:
    """The searchers' names, then the pipeline's own ``sensitivity`` (no search: the
    sensitivity-picked policy)."""
    from amc.search.registry import SEARCHERS

    return [*SEARCHERS, *PIPELINE_METHODS]


# the pipeline's methods that are not searchers (amc.pipeline.search branches on membership here)
PIPELINE_METHODS: Registry[str] = Registry("method")
PIPELINE_METHODS.register("sensitivity", "sensitivity", help="no search: the sensitivity-picked policy")


def channel_criteria() -> Registry:
    """The channel criteria registry, ``amc.importance.CHANNEL_CRITERIA``."""
    from amc.importance import CHANNEL_CRITERIA

    return CHANNEL_CRITERIA


def criterion_names() -> list[str]:
    """Channel criteria, then the weight criteria that are not also channel ones (``l1``/``l2``
    mean magnitude for fine-grained pruning)."""
    from amc.importance import WEIGHT_CRITERIA

    return list(dict.fromkeys([*channel_criteria(), *WEIGHT_CRITERIA]))


def granularity_names() -> list[str]:
    from amc.granularity import STRATEGIES

    return list(STRATEGIES)


def reward_names() -> list[str]:
    from amc.evaluator import REWARDS

    return list(REWARDS)


def recovery_names() -> list[str]:
    from amc.evaluator import RECOVERIES

    return list(RECOVERIES)


@dataclass(frozen=True)
class Choices:
    """Field metadata: the valid values are ``names()``, read at validation time and when a parser
    is built (so a name registered later is accepted and listed); ``noun`` words the error."""

    names: Callable[[], Iterable[str]]
    noun: str

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def check(self, value: Any) -> Any:
        if value is None:
            return value
        known = list(self.names())
        if value not in known:
            raise _Invalid(f"unknown {self.noun} {value!r}; known: {', '.join(known)}")
        return value


def _cli(flag: str | None = None, **extra: Any) -> dict[str, Any]:
    """Per-field CLI metadata (``json_schema_extra``), only where the flag differs from the field's name."""
    return {"cli": {"flag": flag, **extra}}


def _ratios(values: tuple[float, ...], what: str) -> tuple[float, ...]:
    if not all(0 < r < 1 for r in values):
        raise _Invalid(f"{what} must be in (0, 1), got {list(values)}")
    return values


_FROZEN = ConfigDict(frozen=True, extra="forbid")


# -- the parts -------------------------------------------------------------------------------------
class PruningOptions(BaseModel):
    """What to reach and how channels or weights are ranked."""

    model_config = _FROZEN

    budget: str = Field(default="macs=0.5", description="KIND=FRACTION, KIND in size, macs, params, latency")
    granularity: Annotated[str | None, Choices(granularity_names, "granularity")] = Field(
        default=None, description="default: fine for a size budget, channel otherwise")
    criterion: Annotated[str, Choices(criterion_names, "criterion")] = Field(
        default="l2", description="importance: channel l1, l2, l2_next, bn, taylor, obd, apoz; fine magnitude "
                                  "(l1/l2 mean it), obd, synflow")
    round_to: int = Field(default=8, ge=1, description="channel multiple (1 = off)")
    lower: float = Field(default=0.0, ge=0, lt=1, description="lowest ratio per layer")
    upper: float | None = Field(default=None, gt=0, lt=1, description="highest per-layer ratio (default 0.9 for "
                                                                      "channel pruning, 0.98 for fine-grained)")

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: str) -> str:
        from amc.budget import Budget

        try:
            Budget.parse(v)  # a malformed budget fails here, before any work
        except BudgetError as e:
            raise _Invalid(str(e), BudgetError) from None
        return v


class SearchOptions(BaseModel):
    """Which search, how long, and where a study lives."""

    model_config = _FROZEN

    method: Annotated[str, Choices(method_names, "method")] = Field(
        default="optuna", description="a searcher (amc: the DDPG agent, optuna...) or sensitivity (no search: the "
                                      "sensitivity-picked policy)")
    episodes: int = Field(default=100, ge=1, description="AMC episodes or Optuna trials")
    warmup: int | None = Field(default=None, ge=0, description="AMC random warm-up episodes (default: a third)")
    sigma_min: float = Field(default=0.2, ge=0, description="AMC: the exploration width never decays under this "
                                                            "(0: AMC's own decay to nothing)")
    exploit_every: int = Field(default=2, ge=0, description="AMC: every this many learning episodes, one perturbs "
                                                            "the best episode so far (0: never, as AMC)")
    rerank: int = Field(default=5, ge=0, description="re-score the search's top K distinct policies on every "
                                                     "held-out image (a finetune recovery: on other batches) and keep "
                                                     "the best of those; it runs when the reward saw a subset of the "
                                                     "held-out images or a finetune (0: keep the best reward)")
    rerank_steps: int = Field(default=0, ge=0, description="SGD steps of each re-ranked policy's recovery before "
                                                           "it is scored (a short finetune; 0: the search's own "
                                                           "recovery)")
    seed: int = Field(default=0, ge=0)
    storage: str | None = Field(default=None, description="Optuna storage URL (default: sqlite in the run folder)")
    study: str | None = Field(default=None, description="Optuna study name (default compress-<model>): one per job on "
                                                        "a shared storage")


class EvaluationOptions(BaseModel):
    """How a policy is scored during the search, and the final test numbers."""

    model_config = _FROZEN

    reward: Annotated[str, Choices(reward_names, "reward")] = Field(
        default="acc", description="acc (AMC), acc_loss (held-out loss as tie-breaker), error_log_flops, acc_penalty")
    recovery: Annotated[str, Choices(recovery_names, "recovery")] = Field(
        default="bn", description="after pruning, before scoring: BN recalibration, --recovery-steps SGD steps, or "
                                  "(channel) AMC's least-squares reconstruction of the layers that lost input channels")
    recovery_steps: int = Field(default=20, ge=0, description="SGD steps of the finetune recovery")
    calib_images: int | None = Field(default=None, ge=1, description="BN recalibration images per reward (default: "
                                                                      "chosen for the device: 256 on the CPU, 5120 "
                                                                      "on CUDA)")
    eval_images: int | None = Field(default=None, ge=1, description="held-out images per reward (default: chosen for "
                                                                    "the device: 1000 on the CPU, all on CUDA)")
    score_on: Literal["auto", "masked", "physical"] = Field(
        default="auto", description="score channel policies on the masked dense copy or the physically pruned one "
                                    "(auto: physical on the CPU with BN recovery)")
    test_limit: int | None = Field(default=None, ge=1, description="test images for the final numbers (default: all)")


class FinetuneOptions(BaseModel):
    """The final finetune (the benchmark protocol's)."""

    model_config = _FROZEN

    finetune_epochs: float = Field(default=5.0, ge=0, description="epochs of the final finetune")
    lr: float = Field(default=0.01, gt=0, description="finetune learning rate")
    distill: float = Field(default=0.0, ge=0, le=1, description="knowledge-distillation weight in [0, 1] of the "
                                                                "finetune, the dense model as teacher")
    batch_size: int = Field(default=256, ge=1, description="training batch size (the finetune's)")

    @field_validator("finetune_epochs", "lr", "distill", mode="before")
    @classmethod
    def _finetune(cls, v: Any, info: ValidationInfo) -> Any:
        """The finetune's three numbers checked together, in the words users already know."""
        try:
            x = float(v)
        except (TypeError, ValueError):
            return v  # not a number: pydantic's own error
        ok = {"finetune_epochs": x >= 0, "lr": x > 0, "distill": 0 <= x <= 1}[str(info.field_name)]
        if not ok:
            name = {"finetune_epochs": "epochs"}.get(str(info.field_name), str(info.field_name))
            raise _Invalid(f"finetune needs epochs >= 0, lr > 0 and a distill weight in [0, 1]; got {name} {v}")
        return v


class SensitivityOptions(BaseModel):
    """The per-layer scans that pick the sensitivity policy (the searches' first trial)."""

    model_config = _FROZEN

    sensitivity_ratios: tuple[float, ...] | None = Field(
        default=None, min_length=1, description="channel ratios scanned per layer (default: chosen for the device: "
                                                "0.25,0.5,0.75 on the CPU, 0.2,0.4,0.6,0.8 on CUDA)")
    sparsities: tuple[float, ...] = Field(default=(0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98),
                                          min_length=1, description="fine-grained sparsities scanned per layer")

    @field_validator("sensitivity_ratios")
    @classmethod
    def _scan(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        return None if v is None else _ratios(v, "sensitivity ratios")

    @field_validator("sparsities")
    @classmethod
    def _sparsities(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return _ratios(v, "sparsities")


class LatencyOptions(BaseModel):
    """CPU latency measurements, and the fit of a latency budget to them."""

    model_config = _FROZEN

    latency_runs: int = Field(default=50, ge=1, description="timed CPU runs per latency measurement (median)")
    latency_fit_rounds: int = Field(default=4, ge=0, description="latency budget: rounds that tighten the chosen "
                                                                 "policy until the built model meets the budget by "
                                                                 "measurement (0: trust the latency table)")
    latency_search_rounds: int = Field(default=2, ge=0, description="latency budget: candidates of the uniform "
                                                                    "policy built and measured before the search, "
                                                                    "from which the search's latency estimate is "
                                                                    "corrected (0: search on the table's estimate)")
    latency_fit_candidates: bool = Field(default=False, description="latency budget: fit each of the final choice's "
                                                                    "candidates to the budget by measurement before "
                                                                    "it re-scores them (off: one seed on the shared "
                                                                    "MobileNetV2, the agent +12.8 points, Optuna -1.3, "
                                                                    "in twice the time; latency_trained_aim.md)")
    latency_confirm: int = Field(default=2, ge=0, le=10, description="latency budget: readings more of a candidate "
                                                                     "whose paired measurement meets the budget, "
                                                                     "judged on their median (single readings on a "
                                                                     "shared machine differ by 5-10% between calls)")
    latency_rounds: int = Field(default=7, ge=1, le=100, description="alternating rounds of the paired "
                                                                   "measurement (dense and compressed, median of the "
                                                                   "rounds' ratios)")
    latency_threads: int = Field(default=1, ge=1, le=256, description="CPU threads of the latency target")
    latency_batch: int = Field(default=1, ge=1, le=4096, description="batch size of the latency target")
    latency_runtime: Literal["torch", "onnxruntime"] = Field(
        default="torch", description="runtime of the latency target on the CPU: eager PyTorch, or the model "
                                     "exported to ONNX in an ONNX Runtime session (the table, the fit to a latency "
                                     "budget and the paired speedup are all taken there)")
    latency_layout: Literal["contiguous", "channels_last"] = Field(
        default="contiguous", description="memory layout of the latency target (eager PyTorch): its weights and "
                                          "inputs; the torch.export program is written in it")


class ExportOptions(BaseModel):
    """The files of the compressed model."""

    model_config = _FROZEN

    export_dtype: Literal["fp32", "fp16"] = Field(default="fp32", description="exported weights",
                                                  json_schema_extra=_cli("--dtype"))
    onnx: bool = Field(default=True, description="export the model as ONNX too",
                       json_schema_extra=_cli(negative_help="skip the ONNX export"))


# -- defaults chosen for the device ------------------------------------------------------------------
# A policy's score costs one forward pass over calib_images train images (BN recalibration) and eval_images
# held-out ones; the sensitivity scan scores len(sensitivity_ratios) policies per layer. On CUDA the
# benchmarks' sizes cost seconds; on a 2-core CPU they made a default amc.compress of a width-0.5
# MobileNetV2 on a 2,500-image set spend a quarter of an hour in the scan alone. The CPU sizes keep such
# a run to minutes (reports/service.md, "Defaults on this CPU"); 256 calibration and 1,000 evaluation images
# ranked 50 policies like 1,024 and 2,000 did (Spearman 0.943, reports/reward_cost.md). None in these options
# means "chosen for the device".
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"calib_images": 256, "eval_images": 1000, "sensitivity_ratios": (0.25, 0.5, 0.75)},
    "cuda": {"calib_images": 5120, "eval_images": None, "sensitivity_ratios": (0.2, 0.4, 0.6, 0.8)},
}


def device_kind(device: Any = None) -> str:
    """The ``DEVICE_DEFAULTS`` key of ``device`` ("cpu", "cuda", "cuda:1", a ``torch.device``; None: the
    default device, CUDA when available). Devices other than CUDA get the CPU's sizes."""
    if device is None:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = getattr(device, "type", None) or str(device).split(":", 1)[0]
    return "cuda" if kind == "cuda" else "cpu"


PARTS: dict[str, type[BaseModel]] = {
    "pruning": PruningOptions, "search": SearchOptions, "evaluation": EvaluationOptions,
    "finetune": FinetuneOptions, "sensitivity": SensitivityOptions, "latency": LatencyOptions,
    "export": ExportOptions,
}
LEAVES: dict[str, str] = {leaf: part for part, cls in PARTS.items() for leaf in cls.model_fields}  # leaf -> part
assert len(LEAVES) == sum(len(cls.model_fields) for cls in PARTS.values()), "option names must be unique"


class CompressConfig(BaseModel):
    """Every option of a compression, in parts (see the module doc); flat keywords are routed to
    their part, and ``config.NAME`` reads a leaf option."""

    model_config = _FROZEN
    _device: str | None = PrivateAttr(default=None)  # the device the defaults were chosen for (for_device)
    _chosen: frozenset[str] = PrivateAttr(default=frozenset())  # the options for_device chose (the user left None)

    pruning: PruningOptions = PruningOptions()
    search: SearchOptions = SearchOptions()
    evaluation: EvaluationOptions = EvaluationOptions()
    finetune: FinetuneOptions = FinetuneOptions()
    sensitivity: SensitivityOptions = SensitivityOptions()
    latency: LatencyOptions = LatencyOptions()
    export: ExportOptions = ExportOptions()

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise user_error(e) from None

    @model_validator(mode="before")
    @classmethod
    def _route(cls, data: Any) -> Any:
        """Flat leaf names into their parts (a part given whole, as a model or a dict, is merged)."""
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key in PARTS:
                part = value.model_dump() if isinstance(value, BaseModel) else dict(value)
                out[key] = {**part, **out.get(key, {})}
            elif key in LEAVES:
                out.setdefault(LEAVES[key], {})[key] = value
            else:
                raise unknown_option(key)
        return out

    @model_validator(mode="after")
    def _evaluation(self) -> CompressConfig:
        """The evaluator's own checks (e.g. a reconstruct recovery needs channel pruning), up front."""
        self.eval_config()
        return self

    def for_device(self, device: Any = None) -> CompressConfig:
        """A copy with the options left to the device (None: ``DEVICE_DEFAULTS``) chosen for ``device``
        ("cpu", "cuda", a ``torch.device``; None: the default device). Reading such an option from a
        config not made here gives the default device's choice."""
        kind = device_kind(device)
        chosen = {k: v for k, v in DEVICE_DEFAULTS[kind].items() if getattr(getattr(self, LEAVES[k]), k) is None}
        out = self.replace(**chosen) if chosen else self.model_copy()
        out._device, out._chosen = kind, self._chosen | frozenset(chosen)
        return out

    @property
    def device_chosen(self) -> str | None:
        """The device ``for_device`` chose the defaults for (None: not chosen yet)."""
        return self._device

    def chosen_for_device(self, name: str) -> bool:
        """Whether option ``name`` was left to the device (set by ``for_device``, or still unset)."""
        return name in self._chosen or (name in DEVICE_DEFAULTS["cpu"] and
                                        getattr(getattr(self, LEAVES[name]), name) is None)

    def eval_config(self, bounds: Mapping[str, tuple[float, float]] | None = None, device: Any = None) -> EvalConfig:
        """The evaluator's own config from these options: the one place one is made from the other
        (the granularity, the upper ratio and, for ``device``, the device's defaults resolved;
        ``bounds``: per-layer overrides, e.g. a search box)."""
        from amc.evaluator import EvalConfig

        if device is not None:
            return self.for_device(device).eval_config(bounds)
        return EvalConfig(granularity=self.resolved_granularity, reward=self.reward, recovery=self.recovery,
                          recovery_steps=self.recovery_steps, calib_images=self.calib_images,
                          eval_images=self.eval_images, score_on=self.score_on, lower=self.lower,
                          upper=self.resolved_upper, criterion=self.criterion, round_to=self.round_to,
                          bounds=bounds)

    def __getattr__(self, name: str) -> Any:
        part = LEAVES.get(name)
        if part is None:
            return super().__getattr__(name)  # type: ignore[misc]
        value = getattr(getattr(self, part), name)
        if value is None and name in DEVICE_DEFAULTS["cpu"] and self._device is None:
            return DEVICE_DEFAULTS[device_kind()][name]  # left to the device: the default device's choice
        return value

    def flat(self) -> dict[str, Any]:
        """Every leaf option by name (the record summary.json keeps)."""
        return {leaf: getattr(getattr(self, part), leaf) for leaf, part in LEAVES.items()}

    def replace(self, **changes: Any) -> CompressConfig:
        """A copy with ``changes`` (leaf names), validated again."""
        return CompressConfig(**(self.flat() | changes))

    @property
    def parsed_budget(self) -> Budget:
        from amc.budget import Budget

        return Budget.parse(self.pruning.budget)

    @property
    def resolved_granularity(self) -> str:
        if self.pruning.granularity is not None:
            return self.pruning.granularity
        return "fine" if self.parsed_budget.kind == "size" else "channel"

    @property
    def resolved_upper(self) -> float:
        """``upper``, or the granularity's default (``amc.budget.default_upper``)."""
        from amc.budget import default_upper

        upper = self.pruning.upper
        return upper if upper is not None else default_upper(self.resolved_granularity)


# -- for what derives from the model --------------------------------------------------------------
def leaf_fields(model: type[BaseModel] = CompressConfig) -> dict[str, tuple[Any, FieldInfo]]:
    """Every leaf option of ``model`` (parts flattened) as ``name -> (annotation, FieldInfo)``, in
    declaration order: what ``pydantic.create_model`` takes to derive a flat model (the service's
    request, a form) with the same types, defaults, bounds, choices and descriptions."""
    out: dict[str, tuple[Any, FieldInfo]] = {}
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and name in PARTS:
            out.update(leaf_fields(ann))
        else:
            out[name] = (_annotated(info), info)
    return out


def _annotated(info: FieldInfo) -> Any:
    """The field's annotation with its ``Choices`` (kept in ``FieldInfo.metadata``) re-attached."""
    extra = [m for m in info.metadata if isinstance(m, Choices)]
    return Annotated[(info.annotation, *extra)] if extra else info.annotation


def choices_of(info: FieldInfo) -> Choices | None:
    """The field's registry-backed choices, if any."""
    return next((m for m in info.metadata if isinstance(m, Choices)), None)


def iter_leaves() -> Iterator[tuple[str, FieldInfo]]:
    """``(name, FieldInfo)`` of every option of ``CompressConfig``, in declaration order."""
    for name, (_, info) in leaf_fields(CompressConfig).items():
        yield name, info


def unknown_option(name: str) -> OptionError:
    """One clear error for an option ``CompressConfig`` does not have, with the close matches."""
    close = difflib.get_close_matches(name, list(LEAVES), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return OptionError(f"unknown option {name!r}; {hint}CompressConfig takes: {', '.join(sorted(LEAVES))}")


def user_error(e: ValidationError) -> AmcError:
    """The first problem of a ``ValidationError`` as one line naming the option (the error class a
    validator chose, e.g. ``BudgetError``, else ``OptionError``)."""
    errors = e.errors()
    first = errors[0]
    name = next((str(p) for p in reversed(first["loc"]) if isinstance(p, str) and p in LEAVES),
                ".".join(map(str, first["loc"])) or "options")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, _Invalid):
        return cause.error(f"{cause}{more}")
    return OptionError(f"option {name}: {first['msg']}, got {first.get('input')!r}{more}")
