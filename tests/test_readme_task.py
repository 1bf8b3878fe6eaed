"""The README's task example ("Any task: your own evaluate, finetune and calibration") runs as written (its run
folder redirected to a temporary one)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Any task: your own evaluate, finetune and calibration"


def _task_example() -> str:
    section = (ROOT / "README.md").read_text().split(HEADING, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's task section has no python example"
    return match.group(1)


def test_readme_task_example_runs(tmp_path, capsys):
    code = _task_example().replace('run_dir="runs/task-example"', f'run_dir="{tmp_path / "run"}"')
    assert str(tmp_path) in code  # the example still names its run folder the same way
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    result = scope["result"]
    assert result.metrics["macs_fraction"] <= 0.5 + 1e-6 and "of the MACs" in capsys.readouterr().out
    x = scope["torch"].randn(2, 3, 32, 32)
    assert [o.shape for o in result.model(x)] == [o.shape for o in scope["model"](x)]  # every output's shape kept
    assert (tmp_path / "run" / "recipe.yaml").is_file() and (tmp_path / "run" / "report.md").is_file()
