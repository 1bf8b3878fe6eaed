"""Flags generated from the options model: every option's flag parses into ``CompressConfig``, and a
name registered after the parser was built (a plugin's criterion or searcher) is a valid choice of
``amc compress`` and ``amc search`` and of the model's validation at once."""

import argparse

import pytest

from amc.cli import build_parser
from amc.commands.options import add_option_flags, config_from_args
from amc.options import LEAVES, CompressConfig, OptionError, channel_criteria
from amc.search.registry import SEARCHERS


def _sub(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _choices(parser: argparse.ArgumentParser, flag: str) -> list[str]:
    action = next(a for a in parser._actions if flag in a.option_strings)
    return list(action.choices)


def _add(registry, name, obj):
    if hasattr(registry, "register"):
        registry.register(name, obj, help="a test's entry")
    else:  # a plain dict registry
        registry[name] = obj


def _remove(registry, name):
    if hasattr(registry, "unregister"):
        registry.unregister(name)
    else:
        registry.pop(name, None)


@pytest.fixture
def plugin():
    """A channel criterion and a searcher registered for one test, then withdrawn."""
    criteria = channel_criteria()
    _add(criteria, "test_crit", lambda module, group: None)
    _add(SEARCHERS, "test_search", lambda evaluator, spec, run_dir: None)
    yield
    _remove(criteria, "test_crit")
    _remove(SEARCHERS, "test_search")


def test_registered_names_are_choices_everywhere(plugin):
    compress, search = _sub("compress"), _sub("search")
    for parser in (compress, search):
        assert "test_crit" in _choices(parser, "--criterion")
        assert "test_search" in _choices(parser, "--method")
    assert "sensitivity" in _choices(compress, "--method") and "sensitivity" not in _choices(search, "--method")
    cfg = CompressConfig(criterion="test_crit", method="test_search")
    assert (cfg.criterion, cfg.method) == ("test_crit", "test_search")
    args = compress.parse_args(["ckpt.pt", "--criterion", "test_crit", "--method", "test_search"])
    assert config_from_args(args).method == "test_search"


def test_withdrawn_names_are_refused():
    with pytest.raises(OptionError, match="unknown criterion 'test_crit'"):
        CompressConfig(criterion="test_crit")
    args = _sub("compress").parse_args(["ckpt.pt", "--method", "test_search"])
    with pytest.raises(OptionError, match="unknown method 'test_search'; known: amc, optuna"):
        config_from_args(args)
    # amc search runs searchers only: the pipeline's "sensitivity" is not one of its choices
    with pytest.raises(OptionError, match="unknown method 'sensitivity'"):
        config_from_args(_sub("search").parse_args(["ckpt.pt", "--method", "sensitivity"]))


def test_an_unknown_name_is_one_line_and_exit_2(capsys):
    from amc.cli import main

    assert main(["compress", "no_such_model", "--criterion", "nonsense"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown criterion 'nonsense'; known: l1, l2" in err and len(err.splitlines()) == 1


def test_compress_flags_parse_into_the_options_model():
    args = _sub("compress").parse_args([
        "ckpt.pt", "--budget", "size=0.3", "--method", "amc", "--episodes", "4", "--warmup", "2", "--seed", "3",
        "--finetune-epochs", "0.5", "--lr", "0.02", "--distill", "0.5", "--calib-images", "64", "--eval-images",
        "32", "--score-on", "masked", "--test-limit", "16", "--upper", "0.8", "--criterion", "obd", "--round-to",
        "4", "--latency-runs", "3", "--latency-fit-rounds", "0", "--storage", "sqlite:///x.db", "--dtype", "fp16",
        "--no-onnx", "--batch-size", "32", "--sensitivity-ratios", "0.3,0.6"])
    cfg = config_from_args(args)
    assert cfg.flat() == CompressConfig(
        budget="size=0.3", method="amc", episodes=4, warmup=2, seed=3, finetune_epochs=0.5, lr=0.02, distill=0.5,
        calib_images=64, eval_images=32, score_on="masked", test_limit=16, upper=0.8, criterion="obd", round_to=4,
        latency_runs=3, latency_fit_rounds=0, storage="sqlite:///x.db", export_dtype="fp16", onnx=False,
        batch_size=32, sensitivity_ratios=(0.3, 0.6)).flat()
    assert config_from_args(_sub("compress").parse_args(["ckpt.pt"])) == CompressConfig()  # the same defaults


def test_search_keeps_its_own_defaults():
    cfg = config_from_args(_sub("search").parse_args(["ckpt.pt"]))
    assert (cfg.method, cfg.granularity, cfg.episodes, cfg.study) == ("amc", "channel", 300, "amc-search")


@pytest.mark.parametrize("only", [None, ("episodes", "onnx", "granularity")])
def test_generator_covers_the_fields(only):
    parser = argparse.ArgumentParser()
    added = add_option_flags(parser, only=only)
    assert added == list(only or LEAVES)
    defaults = {k: v for k, v in vars(parser.parse_args([])).items() if not k.startswith("_")}
    assert defaults == {name: CompressConfig().flat()[name] for name in added}
    with pytest.raises(ValueError, match="not options"):
        add_option_flags(argparse.ArgumentParser(), only=("epochs",))
