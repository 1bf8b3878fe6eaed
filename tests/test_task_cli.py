"""``amc compress MODEL --task pkg.module:make_task``: the user's task from the command line; bad input is one
line and a non-zero exit."""

from __future__ import annotations

import json

from amc.cli import main

MODEL, TASK = "tests.task_models:make_yolo", "tests.task_models:make_detection_task"
FAST = ["--budget", "macs=0.5", "--method", "optuna", "--episodes", "2", "--finetune-epochs", "1",
        "--sensitivity-ratios", "0.5", "--latency-rounds", "1", "--latency-runs", "2", "--upper", "0.8"]


def test_compress_with_a_task_factory(tmp_path, capsys):
    assert main(["compress", MODEL, "--task", TASK, "--out", str(tmp_path), *FAST]) == 0
    out = capsys.readouterr().out
    assert "task: detection (-mse)" in out and "finetuned (validation); test" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metrics"]["macs_fraction"] <= 0.5 + 1e-6 and summary["metrics"]["task"] == "detection"


def test_a_task_and_data_together_is_one_line(tmp_path, capsys):
    assert main(["compress", MODEL, "--task", TASK, "--data", str(tmp_path), "--out", str(tmp_path), *FAST]) != 0
    err = capsys.readouterr().err.strip()
    assert "not both" in err and len(err.splitlines()) == 1


def test_a_factory_that_is_not_a_task_is_one_line(tmp_path, capsys):
    assert main(["compress", MODEL, "--task", "tests.task_models:make_yolo", "--out", str(tmp_path), *FAST]) != 0
    err = capsys.readouterr().err.strip()
    assert "must return an amc.Task, got TinyYolo" in err and len(err.splitlines()) == 1


def test_an_unknown_task_module_is_one_line(tmp_path, capsys):
    assert main(["compress", MODEL, "--task", "tests.no_such_module:make", "--out", str(tmp_path), *FAST]) != 0
    err = capsys.readouterr().err.strip()
    assert "cannot import the task factory" in err and len(err.splitlines()) == 1
