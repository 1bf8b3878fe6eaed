"""The options model: flat keywords routed into parts, validation as one clear error, choices
read from the registries, and the leaf fields a derived model (the service's request) is built from."""

import pydantic
import pytest

from amc.errors import AmcError, BudgetError, PolicyError
from amc.options import LEAVES, PARTS, CompressConfig, OptionError, leaf_fields


def test_flat_keywords_land_in_their_parts():
    cfg = CompressConfig(budget="size=0.4", method="amc", episodes=7, calib_images=64, onnx=False,
                         export_dtype="fp16", sensitivity_ratios=(0.5,))
    assert cfg.pruning.budget == cfg.budget == "size=0.4"
    assert cfg.search.method == cfg.method == "amc" and cfg.search.episodes == 7
    assert cfg.evaluation.calib_images == 64 and cfg.export.onnx is False and cfg.export_dtype == "fp16"
    assert cfg.resolved_granularity == "fine" and cfg.resolved_upper == 0.98
    flat = cfg.flat()
    assert set(flat) == set(LEAVES) and flat["episodes"] == 7 and flat["sensitivity_ratios"] == (0.5,)
    assert CompressConfig(**flat) == cfg  # the flat view round-trips


def test_parts_and_flat_names_merge():
    from amc.options import SearchOptions

    cfg = CompressConfig(search=SearchOptions(method="amc", episodes=3), seed=5)
    assert (cfg.method, cfg.episodes, cfg.seed) == ("amc", 3, 5)
    assert CompressConfig(search={"episodes": 4}).episodes == 4


def test_frozen_and_replace_validates_again():
    cfg = CompressConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.search.episodes = 3  # type: ignore[misc]
    assert cfg.replace(episodes=3).episodes == 3 and cfg.episodes == 100
    with pytest.raises(OptionError, match="episodes"):
        cfg.replace(episodes=0)


@pytest.mark.parametrize(("kw", "error", "words"), [
    ({"method": "magic"}, AmcError, "unknown method 'magic'; known: amc, optuna"),
    ({"budget": "speed=2"}, BudgetError, "unknown budget kind 'speed'"),
    ({"budget": "macs"}, BudgetError, "KIND=FRACTION"),
    ({"criterion": "nope"}, OptionError, "unknown criterion 'nope'"),
    ({"granularity": "coarse"}, OptionError, "unknown granularity 'coarse'"),
    ({"recovery": "pray"}, OptionError, "unknown recovery 'pray'"),
    ({"episodes": 0}, OptionError, "option episodes: Input should be greater than or equal to 1"),
    ({"distill": 1.5}, OptionError, "distill weight in \\[0, 1\\]; got distill 1.5"),
    ({"distill": float("nan")}, OptionError, "got distill nan"),
    ({"lr": 0.0}, OptionError, "got lr 0.0"),
    ({"batch_size": "many"}, OptionError, "option batch_size: Input should be a valid integer"),
    ({"score_on": "fast"}, OptionError, "option score_on"),
    ({"sensitivity_ratios": (0.5, 1.0)}, OptionError, "sensitivity ratios must be in \\(0, 1\\)"),
    ({"epochs": 3}, OptionError, "unknown option 'epochs'; did you mean .*finetune_epochs"),
    ({"recovery": "reconstruct", "budget": "size=0.5"}, PolicyError, "needs channel pruning"),
])
def test_bad_options_are_one_clear_error(kw, error, words):
    with pytest.raises(error, match=words) as info:
        CompressConfig(**kw)
    assert "\n" not in str(info.value)


def test_leaf_names_are_unique_and_derive_a_flat_model():
    fields = leaf_fields()
    assert list(fields) == list(LEAVES) and len(PARTS) == 7
    assert fields["episodes"][1].description and fields["episodes"][1].default == 100
    # a flat request model with the same fields, one bound tightened: the service's way
    spec = {name: (ann, info) for name, (ann, info) in fields.items()}
    spec["episodes"] = (int, pydantic.Field(30, ge=1, le=10_000))
    Flat = pydantic.create_model("Flat", **spec)  # type: ignore[call-overload]
    assert Flat(method="amc").episodes == 30
    with pytest.raises(pydantic.ValidationError, match="unknown method"):
        Flat(method="magic")
    with pytest.raises(pydantic.ValidationError):
        Flat(episodes=10_001)
    assert "unknown" not in str(Flat.model_json_schema())  # the schema (a page's form) builds
    assert CompressConfig(**Flat(seed=3).model_dump()).seed == 3


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1"])
def test_defaults_chosen_for_the_device(device):
    """calib_images, eval_images and the sensitivity grid left to the device (None) are chosen for it: smaller
    on the CPU; a fake "cuda" device argument gets the GPU sizes (no GPU needed: it is only a name)."""
    import torch

    from amc.options import DEVICE_DEFAULTS

    cfg = CompressConfig()
    assert cfg.evaluation.calib_images is None and cfg.sensitivity.sensitivity_ratios is None
    want = DEVICE_DEFAULTS["cuda" if device.startswith("cuda") else "cpu"]
    for dev in (device, torch.device(device)):
        chosen = cfg.for_device(dev)
        assert (chosen.calib_images, chosen.eval_images, chosen.sensitivity_ratios) == (
            want["calib_images"], want["eval_images"], want["sensitivity_ratios"])
        assert chosen.device_chosen == device.split(":")[0]
        ev = cfg.eval_config(device=dev)
        assert (ev.calib_images, ev.eval_images) == (want["calib_images"], want["eval_images"])
    cpu, cuda = DEVICE_DEFAULTS["cpu"], DEVICE_DEFAULTS["cuda"]
    assert cpu["calib_images"] < cuda["calib_images"]
    assert len(cpu["sensitivity_ratios"]) < len(cuda["sensitivity_ratios"])


def test_given_values_win_over_the_device_and_an_unchosen_config_reads_the_default_device(monkeypatch):
    import torch

    from amc.options import DEVICE_DEFAULTS

    cfg = CompressConfig(calib_images=64, sensitivity_ratios=(0.5,))
    chosen = cfg.for_device("cuda")
    assert chosen.calib_images == 64 and chosen.sensitivity_ratios == (0.5,)
    assert chosen.eval_images is None  # CUDA: every held-out image
    assert cfg.for_device("cpu").eval_images == DEVICE_DEFAULTS["cpu"]["eval_images"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert CompressConfig().calib_images == DEVICE_DEFAULTS["cpu"]["calib_images"]
    assert CompressConfig().eval_config().calib_images == DEVICE_DEFAULTS["cpu"]["calib_images"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert CompressConfig().sensitivity_ratios == DEVICE_DEFAULTS["cuda"]["sensitivity_ratios"]
    assert CompressConfig().flat()["calib_images"] is None  # the record keeps what was given
