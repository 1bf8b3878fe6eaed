"""benchmarks/search_hard.py resumes on a fresh machine from the pieces its committed report carries."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.search_hard import cache_files, restore

SETTINGS = {"data": "/a/cifar.tar.xz", "checkpoint": "/a/r20.pt", "epochs": 2.0, "trials": 150}


def _report(tmp_path: Path, files: dict[str, str], settings: dict) -> Path:
    path = tmp_path / "search_hard.json"
    path.write_text(json.dumps({"settings": settings, "cache_files": files}))
    return path


def test_a_report_fills_in_what_the_cache_lacks(tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / "macs03" / "s0").mkdir(parents=True)
    (old / "macs03" / "baselines.json").write_text('{"uniform": {"policy": {"a": 0.5}}}')
    (old / "macs03" / "s0" / "row_optuna.json").write_text('{"test_accuracy": 0.8}')
    (old / "latency_lut_cpu.csv").write_text("target,ms\n")
    (old / "macs03" / "s0" / "optuna-run").mkdir()
    (old / "macs03" / "s0" / "optuna-run" / "study.db").write_bytes(b"sqlite")  # a study: not carried
    files = cache_files(old)
    assert set(files) == {"macs03/baselines.json", "macs03/s0/row_optuna.json", "latency_lut_cpu.csv"}

    new = tmp_path / "new"
    (new / "macs03" / "s0").mkdir(parents=True)
    (new / "macs03" / "s0" / "row_optuna.json").write_text('{"test_accuracy": 0.9}')  # measured here: kept
    moved = {**SETTINGS, "data": "/b/cifar.tar.xz", "checkpoint": "/b/r20.pt"}  # other paths, same protocol
    assert restore(new, _report(tmp_path, files, SETTINGS), moved) == 2
    assert cache_files(new) == {**files, "macs03/s0/row_optuna.json": '{"test_accuracy": 0.9}'}


def test_other_settings_or_paths_outside_the_cache_are_not_restored(tmp_path: Path) -> None:
    files = {"macs03/baselines.json": "{}", "../escape.json": "{}"}
    report = _report(tmp_path, files, SETTINGS)
    assert restore(tmp_path / "a", report, {**SETTINGS, "epochs": 0.1}) == 0  # another protocol
    assert not (tmp_path / "a").exists()
    assert restore(tmp_path / "b", report, SETTINGS) == 1
    assert not (tmp_path / "escape.json").exists()
    assert restore(tmp_path / "c", tmp_path / "missing.json", SETTINGS) == 0


def test_a_report_from_before_an_option_existed_resumes_at_its_old_default(tmp_path: Path) -> None:
    from benchmarks.search_hard import LATER_SETTINGS

    report = _report(tmp_path, {"macs03/baselines.json": "{}"}, SETTINGS)  # run before the re-rank options
    assert restore(tmp_path / "a", report, {**SETTINGS, **LATER_SETTINGS}) == 1
    other = {**SETTINGS, **LATER_SETTINGS, "rr_steps": LATER_SETTINGS["rr_steps"] + 1}
    assert restore(tmp_path / "b", report, other) == 0  # another re-rank: another protocol
