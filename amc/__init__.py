"""AutoML compression search for PyTorch models.

The public API (see ``amc/api.py`` and the README's "Python API"):

- ``amc.compress(model, budget="macs=0.5", data=..., ...) -> CompressResult``: the one button; its option
  keywords are the fields of ``CompressConfig`` (``amc/options.py``: every option declared once).
- ``amc.compress(model, budget=..., task=amc.Task(example_inputs=x, evaluate=my_map, ...))``: any model and
  task (a detector, a segmenter) scored by the user's own evaluate (``amc/task.py``).
- ``amc.Recipe.load(path).apply(model)``: re-apply a compression to a dense model bit for bit.
- ``amc.inspect_model(model, example_inputs)``: which layers can be pruned and which are held, and why.
- ``amc.prune_to_budget(model, example_inputs, "macs=0.5")``: a data-free one-shot channel pruner;
  ``amc.prune_to_latency(model, example_inputs, "latency=0.6")``: the same to a latency budget met by a
  paired measurement on the target.
- The pieces for driving a search yourself: ``Evaluator`` / ``EvalConfig`` (pruner + recovery + score),
  ``make_searcher(method, evaluator, SearchSpec(...), run_dir) -> Searcher`` (``propose`` / ``observe`` /
  ``run`` -> ``SearchResult``), ``amc.data`` (``open_data``, ``splits_from_torch``), ``amc.models.resolve_model``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module; imported on first use so `import amc` stays light (the CLI imports submodules itself)
_EXPORTS = {
    "compress": "amc.api", "open_dataset": "amc.api", "open_model": "amc.api",
    "CompressConfig": "amc.options", "CompressResult": "amc.pipeline",
    "Recipe": "amc.recipe", "load_recipe": "amc.recipe", "apply_recipe": "amc.recipe",
    "Budget": "amc.budget",
    "Evaluator": "amc.evaluator", "EvalConfig": "amc.evaluator",
    "make_searcher": "amc.search.registry", "SearchSpec": "amc.search.registry",
    "Searcher": "amc.search.base", "SearchResult": "amc.search.base",
    "inspect_model": "amc.inspect", "Prunability": "amc.inspect",
    "prune_to_budget": "amc.pruners.oneshot", "prune_to_latency": "amc.latency",
    "resolve_model": "amc.models",
    "AmcError": "amc.errors",
    "Task": "amc.task", "ClassificationTask": "amc.task", "TaskError": "amc.task",
}
__all__ = [
    "AmcError", "Budget", "ClassificationTask", "CompressConfig", "CompressResult", "EvalConfig", "Evaluator",
    "Prunability", "Recipe", "SearchResult", "SearchSpec", "Searcher", "Task", "TaskError", "__version__",
    "apply_recipe", "compress", "inspect_model", "load_recipe", "make_searcher", "open_dataset", "open_model",
    "prune_to_budget", "prune_to_latency", "resolve_model",
]

if TYPE_CHECKING:
    from amc.api import compress, open_dataset, open_model
    from amc.budget import Budget
    from amc.errors import AmcError
    from amc.evaluator import EvalConfig, Evaluator
    from amc.inspect import Prunability, inspect_model
    from amc.latency import prune_to_latency
    from amc.models import resolve_model
    from amc.options import CompressConfig
    from amc.pipeline import CompressResult
    from amc.pruners.oneshot import prune_to_budget
    from amc.recipe import Recipe, apply_recipe, load_recipe
    from amc.search.base import Searcher, SearchResult
    from amc.search.registry import SearchSpec, make_searcher
    from amc.task import ClassificationTask, Task, TaskError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'amc' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
