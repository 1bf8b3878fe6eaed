"""Run reports: one ``report.md`` with tables and PNG plots (matplotlib, Agg backend) in a run folder.

Lifecycle: build sections from what a run produced -> ``write_report(run_dir, *sections)`` ->
``run_dir/report.md`` plus one PNG (and, for data sections, one CSV) per section, each written
atomically. A section is a small frozen dataclass with ``render(run_dir, slug) -> markdown``:

- ``Text(title, body)``, ``Table(title, frame)``: prose and tables (e.g. metrics, stage timings).
- ``WeightDistributions(dense, pruned)``: per-layer weight histograms before/after (``amc.plots``).
- ``Sensitivity(curves)``: accuracy vs. per-layer ratio; columns ``layer``, ``ratio`` (or
  ``sparsity``), ``accuracy`` (``amc.plots``).
- ``SearchProgress(trials)``: reward per episode; columns ``episode`` (or Optuna's ``trial``),
  ``reward``, ``feasible`` and optionally ``best`` (running best value, or a flag marking new bests).
- ``PolicyBars(policies)``: per-layer ratios, one bar group per layer, one colour per policy.
- ``AccuracyVsBudget(results)``: accuracy against the budget reached; columns ``method``,
  ``budget`` (fraction of dense), ``accuracy``; optional ``dense_accuracy`` draws a reference line.
- ``Image(title, path)``: an existing PNG copied in.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from amc.io import atomic_write_bytes, atomic_write_text
from amc.layers import prunable_names
from amc.plots import (
    accuracy_budget_figure,
    policy_figure,
    progress_frame,
    require_columns,
    save_figure,
    search_progress_figure,
)

MAX_HIST_LAYERS = 16  # weight histograms: at most this many layers (evenly spaced) keep the grid readable


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4g", index: bool = False) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    df = frame.reset_index() if index else frame

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else format(v, floatfmt)
        if isinstance(v, bool):
            return "yes" if v else "no"
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    atomic_write_text(path, frame.to_csv(index=False))
    return path


def _img(title: str, name: str) -> str:
    return f"![{title}]({name})"


@dataclass(frozen=True)
class Text:
    title: str
    body: str

    def render(self, run_dir: Path, slug: str) -> str:
        return self.body


@dataclass(frozen=True)
class Table:
    title: str
    frame: pd.DataFrame
    note: str = ""
    floatfmt: str = ".4g"
    csv: bool = False  # also write <slug>.csv

    def render(self, run_dir: Path, slug: str) -> str:
        parts = [markdown_table(self.frame, self.floatfmt)]
        if self.csv:
            parts.append(f"Data: [{slug}.csv]({slug}.csv)")
            _write_csv(self.frame, run_dir / f"{slug}.csv")
        if self.note:
            parts.append(self.note)
        return "\n\n".join(parts)


@dataclass(frozen=True)
class Image:
    title: str
    path: Path
    caption: str = ""

    def render(self, run_dir: Path, slug: str) -> str:
        src = Path(self.path)
        dst = run_dir / f"{slug}{src.suffix}"
        if src.resolve() != dst.resolve():
            atomic_write_bytes(dst, src.read_bytes())
        return "\n\n".join(filter(None, [_img(self.title, dst.name), self.caption]))


@dataclass(frozen=True)
class WeightDistributions:
    dense: nn.Module
    pruned: nn.Module | None = None
    names: tuple[str, ...] | None = None
    title: str = "Weight distributions"

    def render(self, run_dir: Path, slug: str) -> str:
        from amc.plots import weight_histograms

        names = list(self.names) if self.names is not None else prunable_names(self.dense)
        if len(names) > MAX_HIST_LAYERS:
            step = (len(names) - 1) / (MAX_HIST_LAYERS - 1)
            names = [names[round(i * step)] for i in range(MAX_HIST_LAYERS)]
        path = weight_histograms(self.dense, run_dir / f"{slug}.png", pruned=self.pruned, names=names)
        note = "Blue: dense weights; red: the compressed model's non-zero weights (density-normalised)."
        return f"{_img(self.title, path.name)}\n\n{note}"


@dataclass(frozen=True)
class Sensitivity:
    curves: pd.DataFrame  # layer, ratio | sparsity, accuracy
    title: str = "Sensitivity"
    note: str = ""  # e.g. the split and state of the accuracies

    def render(self, run_dir: Path, slug: str) -> str:
        from amc.plots import sensitivity_curves

        df = self.curves
        require_columns(df, ["layer", "accuracy"], self.title)
        if "ratio" not in df.columns:
            if "sparsity" not in df.columns:
                raise ValueError(f"{self.title}: needs a 'ratio' or 'sparsity' column")
            df = df.rename(columns={"sparsity": "ratio"})
        _write_csv(df, run_dir / f"{slug}.csv")
        path = sensitivity_curves(df, run_dir / f"{slug}.png")
        worst = (df.groupby("layer", sort=False)["accuracy"].min().sort_values().head(3))
        lines = ", ".join(f"{k} ({100 * v:.1f}%)" for k, v in worst.items())
        note = f" {self.note}" if self.note else ""
        return (f"{_img(self.title, path.name)}\n\nEach layer pruned alone.{note} Most sensitive (lowest accuracy "
                f"at the highest ratio tried): {lines}. Data: [{slug}.csv]({slug}.csv)")


@dataclass(frozen=True)
class SearchProgress:
    trials: pd.DataFrame  # episode, reward, feasible, best
    title: str = "Search progress"

    def render(self, run_dir: Path, slug: str) -> str:
        path = save_figure(search_progress_figure(self.trials), run_dir / f"{slug}.png")
        _write_csv(self.trials, run_dir / f"{slug}.csv")
        df, feasible = progress_frame(self.trials)
        n, nf = len(df), int(feasible.sum())
        best = df.loc[feasible, "reward"].max() if nf else float("nan")
        at = int(df.loc[df.loc[feasible, "reward"].idxmax(), "episode"]) if nf else None
        summary = (f"{n} episodes, {nf} within budget; best reward {best:.4g}" + (f" at episode {at}" if nf else "")
                   + f". Data: [{slug}.csv]({slug}.csv)")
        return f"{_img(self.title, path.name)}\n\n{summary}"


@dataclass(frozen=True)
class PolicyBars:
    policies: Mapping[str, Mapping[str, float]]  # label -> {layer: ratio}
    title: str = "Per-layer policy"
    ylabel: str = "pruning ratio"

    def render(self, run_dir: Path, slug: str) -> str:
        path = save_figure(policy_figure(self.policies, self.ylabel), run_dir / f"{slug}.png")
        frame = pd.DataFrame(self.policies).rename_axis("layer").reset_index()
        return f"{_img(self.title, path.name)}\n\n{markdown_table(frame, '.3f')}"


@dataclass(frozen=True)
class AccuracyVsBudget:
    results: pd.DataFrame  # method, budget, accuracy[, dense_accuracy, split, state]
    title: str = "Accuracy vs. budget"
    note: str = ""  # e.g. why a row sits below the budget
    metric: str | None = None  # a task's score in the accuracy column (shown as it is, not in %)

    def render(self, run_dir: Path, slug: str) -> str:
        path = save_figure(accuracy_budget_figure(self.results, self.metric), run_dir / f"{slug}.png")
        _write_csv(self.results, run_dir / f"{slug}.csv")
        shown = self.results.copy()
        for col in ("budget", "accuracy", "dense_accuracy"):  # fractions as percentages; a task's score as it is
            if col in shown:
                as_is = self.metric is not None and col != "budget"
                shown[col] = [(f"{v:.4g}" if as_is else percent(v)) if isinstance(v, int | float) else v
                              for v in shown[col]]
        shown = shown.rename(columns={"budget": "budget reached (of dense)", "accuracy": self.metric or "accuracy"})
        return "\n\n".join(filter(None, [_img(self.title, path.name), markdown_table(shown),
                                           f"Data: [{slug}.csv]({slug}.csv)", self.note]))


Section = Text | Table | Image | WeightDistributions | Sensitivity | SearchProgress | PolicyBars | AccuracyVsBudget


def _slug(title: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "section"
    slug, i = base, 2
    while slug in taken or slug == "report":  # never collide with report.md's own name
        slug, i = f"{base}_{i}", i + 1
    taken.add(slug)
    return slug


@dataclass(frozen=True)
class ReportResult:
    path: Path
    files: list[Path] = field(default_factory=list)  # everything written, report.md last


def write_report(run_dir: str | os.PathLike, *sections: Section, title: str = "Compression report",
                 intro: str = "", filename: str = "report.md", prefix: str = "") -> ReportResult:
    """Render ``sections`` in order into ``run_dir/<filename>`` (plots and CSVs beside it, their
    names starting with ``prefix``, so that several reports can share one folder)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    before = {p: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    taken: set[str] = set()
    parts = [f"# {title}"]
    if intro:
        parts.append(intro)
    for section in sections:
        slug = prefix + _slug(section.title, taken)
        parts.append(f"## {section.title}\n\n{section.render(run_dir, slug)}")
    path = run_dir / filename
    atomic_write_text(path, "\n\n".join(parts) + "\n")
    written = sorted(p for p in run_dir.iterdir()
                     if p != path and (p not in before or p.stat().st_mtime_ns != before[p]))
    return ReportResult(path, [*written, path])


# -- numbers with units (the run report and the page read the same text) ---------------------------
def percent(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage: ``0.49920 -> "49.9%"``."""
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def millis(x: float) -> str:
    """A latency: ``3.3163 -> "3.32 ms"``, ``45.671 -> "45.67 ms"``, ``312.4 -> "312.4 ms"``."""
    return f"{x:.{2 if x < 100 else 1}f} ms"


def file_size(n: int) -> str:
    """Bytes in binary units: ``1536 -> "1.5 KiB"``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def count(n: float) -> str:
    """MACs or parameters: ``31_300_000 -> "31.3 M"``, ``1_204_000_000 -> "1.20 G"``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.{2 if v < 10 else 1}f} {unit}"
    return f"{int(n)}"


KIND_WORDS = {"macs": "MACs", "params": "parameters", "size": "size", "latency": "latency"}
RECOVERY_WORDS = {"bn": "after BN recalibration", "finetune": "after a short SGD recovery",
                  "reconstruct": "after least-squares reconstruction"}  # the evaluator's recovery, in words


def split_words(protocol: str | None) -> tuple[str, str]:
    """(the split the search scored on, the split of the final numbers) in words, for a run's data
    protocol (``amc.data.holdout``: test-halves or heldout; None when not recorded)."""
    return {"test-halves": ("validation half of the test set", "final-test half of the test set"),
            "heldout": ("held-out training images", "test set")}.get(protocol or "", ("held-out split", "test split"))


# -- the run report ---------------------------------------------------------------------------------
def recipe_table(recipe: Any) -> pd.DataFrame:
    """What was done, from an ``amc.recipe.Recipe``: model, budget, search, finetune (its metrics are
    in ``result_table``)."""
    rows: list[tuple[str, Any]] = [("architecture", recipe.model.arch), ("granularity", recipe.granularity),
                                   ("criterion", recipe.criterion), ("layers pruned", len(recipe.layers))]
    if recipe.budget is not None:
        rows.append(("budget", str(recipe.budget)))
    if recipe.search is not None:
        unit = "episodes" if recipe.search.method == "amc" else "trials"
        rows.append(("search", f"{recipe.search.method}, {recipe.search.episodes} {unit}, seed {recipe.search.seed}"))
    ft = recipe.finetune
    sched = f", then {ft.iterative.kind} x{ft.iterative.steps}" if ft.iterative is not None else ""
    rows.append(("finetune", f"{ft.epochs:g} epochs, lr {ft.lr:g}, {ft.schedule}{sched}"))
    return pd.DataFrame(rows, columns=["item", "value"]).astype({"value": str})


def _chosen_scored(recipe: Any, scored: Mapping[str, Any] | None) -> tuple[str, Any] | None:
    """The candidate whose policy the recipe holds (else the search's best), as (name, Result)."""
    if not scored:
        return None
    name = next((k for k, r in scored.items() if dict(r.policy) == dict(recipe.policy)), "search best")
    return (name, scored[name]) if name in scored else None


def result_table(recipe: Any, metrics: Mapping[str, Any], scored: Mapping[str, Any] | None = None,
                 protocol: str | None = None, recovery: str = "bn") -> tuple[pd.DataFrame, str]:
    """The costs and accuracies of a run with their units, each accuracy with its split and state,
    and the note that tells them apart."""
    m = {k: v for k, v in metrics.items() if v is not None}
    held, test = split_words(protocol)
    rec = RECOVERY_WORDS.get(recovery, f"after {recovery} recovery")
    rows: list[tuple[str, str, str]] = []
    if recipe.budget is not None:
        rows.append(("budget", f"{percent(recipe.budget.fraction, 0)} of dense {KIND_WORDS[recipe.budget.kind]}",
                     str(recipe.budget)))
    for key, what in (("macs", "MACs"), ("params", "parameters")):
        frac = m.get(f"{key}_fraction")
        if key in m and frac:
            shape = "x".join(map(str, recipe.model.input_shape[1:]))
            rows.append((what, f"{count(m[key])} ({percent(frac)} of dense {count(m[key] / frac)})",
                         f"one input of {shape}" if key == "macs" else ""))
    if "size_fraction" in m:
        rows.append(("size", f"{percent(m['size_fraction'])} of dense", "non-zero weights x 32 bits"))
    if "latency_speedup" in m and "latency_ms" in m:
        value = f"{m['latency_speedup']:.2f}x faster: {millis(m['latency_ms'])}"
        how = m.get("latency_device", "")
        if "dense_latency_ms" in m:
            value += f" vs {millis(m['dense_latency_ms'])} dense"
        if "latency_fraction" in m and "latency_rounds" in m:
            spread = f", spread +-{m['latency_fraction_spread']:.3f}" if "latency_fraction_spread" in m else ""
            how = (f"paired: median of {m['latency_rounds']} alternating rounds' ratios, "
                   f"{m['latency_fraction']:.3f} of dense{spread}; {how}")
        rows.append(("latency", value, how))
    if "latency_fit_measured" in m and "latency_fit_predicted" in m:  # the table's estimate against the measurement
        aim = (f"the search aimed at {percent(m['latency_search_target'])} on the table (the uniform policy "
               f"predicted {percent(m['latency_search_predicted'])}, measured {percent(m['latency_search_measured'])})"
               "; " if "latency_search_target" in m else "")
        rows.append(("latency estimate", f"{aim}the chosen policy predicted {percent(m['latency_fit_predicted'])}, "
                     f"measured {percent(m['latency_fit_measured'])}", "table vs paired measurement, of dense"))
    if "dense_accuracy" in m:
        rows.append(("accuracy, dense", percent(m["dense_accuracy"]), test))
    if "accuracy_before_finetune" in m:
        rows.append(("accuracy, pruned (no BN recalibration, before finetune)",
                     percent(m["accuracy_before_finetune"]), test))
    chosen = _chosen_scored(recipe, scored)
    if chosen is not None:
        rows.append((f"accuracy, {chosen[0]} policy {rec} (before finetune)", percent(chosen[1].accuracy), held))
    if "accuracy" in m:
        rows.append(("accuracy after finetune", percent(m["accuracy"]), test))
    if "score" in m:
        rows.append(("your score after finetune", f"{m['score']:.4g}"
                     + (f" (dense {m['dense_score']:.4g})" if "dense_score" in m else ""), "your evaluate(model)"))
    if "file_bytes" in m:
        rows.append(("compressed file", file_size(int(m["file_bytes"])), "on disk"))
    note = (f"Accuracies are top-1. The search scored every policy {rec} on the {held}, and picked on it; "
            f"the {test} gave only the final numbers. \"Pruned\" is the model as the recipe rebuilds it, "
            "before any recovery: its BatchNorm statistics are still the dense model's, which is why it can "
            "score far below the search's figure for the same policy.")
    return pd.DataFrame(rows, columns=["quantity", "value", "measured on"]), note


def settings_table(config: Any, device: str | None = None) -> pd.DataFrame:
    """The options a run used that decide its cost (an ``amc.options.CompressConfig``), those chosen
    for the device resolved for ``device``."""
    c = config.for_device(device or "cpu") if hasattr(config, "for_device") else config
    fine = c.resolved_granularity == "fine"
    grid = c.sparsities if fine else c.sensitivity_ratios

    def who(name: str) -> str:  # a device default, or the run's own value
        if name == "sparsities":  # the fine-grained grid has one default, whatever the device
            return ""
        left = c.chosen_for_device(name) if hasattr(c, "chosen_for_device") else True
        return " (the default chosen for the device)" if left else " (set for this run)"

    rows = [("device", device or "cpu", "where the search and the finetune ran"),
            ("calibration images", f"{c.calib_images:,}", "train images that re-estimate BatchNorm statistics "
                                                            "before each policy is scored" + who("calib_images")),
            ("evaluation images", "all" if c.eval_images is None else f"{c.eval_images:,}",
             "held-out images that score each policy" + who("eval_images")),
            ("sensitivity grid", ", ".join(f"{r:g}" for r in grid),
             f"{'sparsities' if fine else 'channel ratios'} tried per layer"
             + who("sparsities" if fine else "sensitivity_ratios")),
            ("search", f"{c.method}, {c.episodes} {'episodes' if c.method == 'amc' else 'trials'}, seed {c.seed}", ""),
            ("finetune", f"{c.finetune_epochs:g} epochs, lr {c.lr:g}, batch {c.batch_size}", ""),
            ("test images", "all" if c.test_limit is None else f"{c.test_limit:,}", "for the final numbers")]
    return pd.DataFrame(rows, columns=["setting", "value", "meaning"])


FILE_WORDS = {"pruned": "the compressed model: model.safetensors and config.json, physically smaller layers",
              "model.sparse.safetensors": "the compressed model: sparse weights",
              "model.onnx": "ONNX, for onnxruntime and other runtimes",
              "model.pt2": "a torch.export program: loads without the model's code"}
NAMED_SOURCES = ("zoo:", "torchvision:", "timm:")  # references `amc apply` rebuilds by name


def use_it(recipe: Any, files: Mapping[str, int]) -> str:
    """Snippets that load the compressed model, re-apply the recipe and run the ONNX file (paths
    relative to the run folder)."""
    parts = ["Paths are relative to this report's folder."]
    if "model.pt2" in files:
        parts.append("Load the compressed model (no model code needed):\n\n```python\nimport torch\n\n"
                     'model = torch.export.load("model.pt2").module()\n```')
    weights = {"pruned": 'load_file("pruned/model.safetensors")',
               "model.sparse.safetensors": 'read_sparse_state("model.sparse.safetensors")[0]'}
    found = next((k for k in weights if k in files), None)
    load = ("from safetensors.torch import load_file\n" if found == "pruned" else
            "from amc.export.files import read_sparse_state\n" if found else "")
    apply = ("Re-apply the recipe to your dense model (the same pruned model, bit for bit)"
             + (", then load the finetuned weights" if found else "") + ":\n\n```python\nimport amc\n" + load
             + '\nrecipe = amc.Recipe.load("recipe.yaml")\n'
             "model = recipe.apply(dense)  # dense: your model, with the weights the run started from\n"
             + (f"model.load_state_dict({weights[found]})\n" if found else "") + "model.eval()\n```")
    parts.append(apply)
    arch = str(recipe.model.arch)
    if arch.startswith(NAMED_SOURCES) or ":" not in arch:
        parts.append("From the command line: rebuild from the dense weights and export (add `--finetune --data "
                     "YOUR_DATA` to finetune as recorded):\n\n```bash\n"
                     "amc apply recipe.yaml --checkpoint DENSE_WEIGHTS --out runs/apply\n```")
    if "model.onnx" in files:
        shape = tuple(recipe.model.input_shape)
        norm = ""
        if recipe.data is not None and recipe.data.mean is not None and recipe.data.std is not None:
            norm = (f" (pixels in [0, 1], minus mean {', '.join(f'{v:.3f}' for v in recipe.data.mean)}, over std "
                    f"{', '.join(f'{v:.3f}' for v in recipe.data.std)})")
        parts.append(f"Run the ONNX file with onnxruntime; inputs normalised like the training data{norm}:\n\n"
                     "```python\nimport numpy as np\nimport onnxruntime as ort\n\n"
                     'session = ort.InferenceSession("model.onnx")\n'
                     f"x = np.zeros({shape}, dtype=np.float32)  # your images\n"
                     "logits = session.run(None, {session.get_inputs()[0].name: x})[0]\n```")
    return "\n\n".join(parts)


def budget_results(scored: Mapping[str, Any], kind: str, metrics: Mapping[str, Any], protocol: str | None = None,
                   recovery: str = "bn") -> pd.DataFrame:
    """Accuracy against the budget reached: each candidate as the search scored it, and the chosen
    model after finetune (columns method, split, state, budget, accuracy)."""
    held, test = split_words(protocol)
    state = f"{RECOVERY_WORDS.get(recovery, recovery)}, before finetune"
    rows = [{"method": k, "split": held, "state": state, "budget": r.cost(kind), "accuracy": r.accuracy}
            for k, r in scored.items()]
    rows.append({"method": "chosen, test after finetune", "split": test, "state": "after finetune",
                 "budget": metrics[f"{kind}_fraction"], "accuracy": metrics["accuracy"]})
    return pd.DataFrame(rows)


def below_budget_note(results: pd.DataFrame, recipe: Any) -> str:
    """Why rows sit below the budget: costs move in steps (channel rounding, per-layer bounds)."""
    if recipe.budget is None or "budget" not in results:
        return ""
    low = results[results["budget"] < recipe.budget.fraction - 0.01]
    if not len(low):
        return ""
    what = ", ".join(f"{r.method} at {percent(r.budget)}" for r in low.itertuples())
    steps = (f"channel counts are rounded to multiples of {recipe.round_to} and " if recipe.granularity == "channel"
             and (recipe.round_to or 1) > 1 else "")
    return (f"Below the {percent(recipe.budget.fraction, 0)} budget: {what}. A policy's cost moves in steps: "
            f"{steps}each layer's ratio stays within its bounds, and the uniform and sensitivity policies take the "
            "least ratio (or accuracy-drop threshold) whose cost fits the budget, which can land a step below it.")


def run_report(
    run_dir: str | os.PathLike,
    recipe: Any,
    dense: nn.Module | None = None,
    compressed: nn.Module | None = None,
    trials: pd.DataFrame | None = None,
    sensitivity: pd.DataFrame | None = None,
    results: pd.DataFrame | None = None,
    timings: Mapping[str, float] | None = None,
    files: Mapping[str, int] | None = None,
    baseline_policies: Mapping[str, Mapping[str, float]] | None = None,
    title: str | None = None,
    *,
    metrics: Mapping[str, Any] | None = None,
    scored: Mapping[str, Any] | None = None,
    config: Any = None,
    device: str | None = None,
    metric: str | None = None,
) -> ReportResult:
    """The standard report of one compression run: the result with units, what was done, the settings,
    the files and how to use them, stage timings, search progress, policy, sensitivity, weight
    distributions, accuracy vs. budget (each when given).

    ``metrics``: the run's metrics (``CompressResult.metrics``; default: the recipe's); ``scored``: the
    candidates' ``amc.evaluator.Result`` on the held-out split (they label the search's accuracy and,
    when ``results`` is None, make the accuracy-vs-budget rows); ``config``: the ``CompressConfig`` (the
    Settings table, the recovery's name); ``device``: where it ran ("cpu", "cuda"); ``metric``: a task's
    score name, when ``results`` hold that score instead of accuracy."""
    from dataclasses import asdict

    protocol = recipe.data.protocol if recipe.data is not None else None
    recovery = getattr(config, "recovery", "bn") if config is not None else "bn"
    m = dict(metrics) if metrics is not None else asdict(recipe.metrics)
    table, note = result_table(recipe, m, scored, protocol, recovery)
    sections: list[Section] = [Table("Result", table, note=note), Table("What was done", recipe_table(recipe))]
    if config is not None:
        sections.append(Table("Settings", settings_table(config, device)))
    if files:
        frame = pd.DataFrame({"file": list(files), "size": [file_size(int(v)) for v in files.values()],
                              "what": [FILE_WORDS.get(k, "") for k in files]})
        sections.append(Table("Files", frame, note="Also here: recipe.yaml (the policy, replayable), "
                                                   "summary.json (every figure), trials.csv, sensitivity.csv."))
    sections.append(Text("Use it", use_it(recipe, files or {})))
    if timings:
        frame = pd.DataFrame({"stage": list(timings), "seconds": [float(v) for v in timings.values()]})
        sections.append(Table("Wall time per stage", frame, floatfmt=".1f"))
    if trials is not None and len(trials):
        sections.append(SearchProgress(trials))
    policies = {"chosen": recipe.policy, **(baseline_policies or {})}
    sections.append(PolicyBars(policies))
    held = split_words(protocol)[0]
    if sensitivity is not None and len(sensitivity):
        sections.append(Sensitivity(sensitivity, note=f"Accuracy on the {held}, "
                                                      f"{RECOVERY_WORDS.get(recovery, recovery)}."))
    if dense is not None:
        sections.append(WeightDistributions(dense, compressed))
    if scored and results is None and recipe.budget is not None and f"{recipe.budget.kind}_fraction" in m:
        results = budget_results(scored, recipe.budget.kind, m, protocol, recovery)
    if results is not None and len(results):
        sections.append(AccuracyVsBudget(results, note=below_budget_note(results, recipe), metric=metric,
                                         title=f"{metric} vs. budget" if metric else "Accuracy vs. budget"))
    return write_report(run_dir, *sections, title=title or f"Compression report: {recipe.model.arch}",
                        intro=_summary(recipe, m, protocol))


def _summary(recipe: Any, m: Mapping[str, Any], protocol: str | None) -> str:
    """The report's first line: what was reached, at what accuracy, how much faster."""
    bits = []
    b = recipe.budget
    if b is not None and m.get(f"{b.kind}_fraction") is not None:
        bits.append(f"**{percent(m[f'{b.kind}_fraction'])} of dense {KIND_WORDS[b.kind]}** "
                    f"(budget {percent(b.fraction, 0)})")
    if m.get("accuracy") is not None:
        dense = f" (dense {percent(m['dense_accuracy'])})" if m.get("dense_accuracy") is not None else ""
        bits.append(f"accuracy {percent(m['accuracy'])} after finetune{dense} on the {split_words(protocol)[1]}")
    if m.get("latency_speedup") is not None:
        bits.append(f"{m['latency_speedup']:.2f}x faster ({m.get('latency_device') or 'CPU'}, paired)")
    return "; ".join(bits) + "." if bits else ""
