"""Reliability report: runs the reliability tests (and the bad-input tests of other test files),
then renders what they held into ``reliability.md`` and ``reliability.json``.

Every number comes from the test run itself: the reliability tests append one JSON line per check
that held to ``$AMC_RELIABILITY_OUT`` (``tests/reliability_counts.py``), and pytest's JUnit XML
gives the pass/fail of each bad-input test elsewhere. Sections: workers x trials held on one
PostgreSQL study, kills survived (SIGKILL mid-trial, mid-episode, mid-export), bad-input classes
tried (each parametrised case counts as one class), safety checks, results lost (must be 0).

PostgreSQL: ``$AMC_TEST_POSTGRES_URL`` if set, else the tests start a server of their own when
the binaries exist (``scripts/postgres.sh`` installs them in CI).

    python benchmarks/reliability.py --out reports                # ~2 min on 2 CPU cores
    python benchmarks/reliability.py --out /tmp/rel --quick        # bad inputs + safety only, ~30 s

The tests run on the CPU whatever ``--device`` says (the workers are tiny models; the point is
processes, databases and files, not speed); ``--device`` is recorded for the protocol.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

from benchmarks.harness import ROOT, machine_info, parser, write_report

OWN = ["tests/test_reliability.py", "tests/test_reliability_inputs.py"]
# bad-input tests that live with their modules: (file::test, what it covers)
ELSEWHERE = [
    ("tests/test_models.py::test_missing_checkpoint", "checkpoint missing (API)"),
    ("tests/test_models.py::test_truncated_checkpoint", "checkpoint truncated (API)"),
    ("tests/test_models.py::test_garbage_checkpoint", "checkpoint of garbage bytes (API)"),
    ("tests/test_models.py::test_bit_flipped_checkpoint_is_refused", "checkpoint bit flip (API)"),
    ("tests/test_models.py::test_checkpoint_of_another_architecture", "checkpoint of another architecture (API)"),
    ("tests/test_models.py::test_shape_mismatch_is_reported", "checkpoint shape mismatch (API)"),
    ("tests/test_models.py::test_pickled_module_is_not_loaded", "pickled module refused (API)"),
    ("tests/test_cli.py::test_bad_input_gives_one_line_and_exit_2", "CLI one-line errors"),
    ("tests/test_cli.py::test_bad_policy_layer", "policy with an unknown layer (CLI)"),
    ("tests/test_recipe.py::test_each_validation_error", "recipe validation (API)"),
    ("tests/test_recipe.py::test_checkpoint_hash_mismatch_and_force", "recipe: wrong model hash (API)"),
    ("tests/test_recipe.py::test_mask_hash_mismatch_is_caught", "recipe: wrong mask hash (API)"),
    ("tests/test_recipe.py::test_missing_files", "recipe or checkpoint missing (API)"),
    ("tests/test_recipe.py::test_cli_apply_errors_are_one_line", "recipe of another architecture (CLI)"),
    ("tests/test_export.py::test_interrupted_sparse_export_keeps_earlier_file", "export interrupted (sparse)"),
    ("tests/test_export.py::test_interrupted_pruned_export_keeps_earlier_pair_or_refuses",
     "export interrupted (pruned pair)"),
    ("tests/test_export.py::test_load_pruned_errors", "damaged pruned export"),
    ("tests/test_export.py::test_sparse_fp16_overflow_is_refused", "fp16 export overflow"),
    ("tests/test_train_data.py::test_image_folder_and_missing_paths", "data path missing / empty (API)"),
    ("tests/test_train_data.py::test_corrupt_archive", "corrupt data archive (API)"),
    ("tests/test_train_data.py::test_nan_loss_raises", "NaN loss in finetune (API)"),
    ("tests/test_budget.py::test_impossible_budget_raises_before_work", "impossible budget (API)"),
    ("tests/test_budget.py::test_parse_rejects", "unparsable budget (API)"),
    ("tests/test_optuna_search.py::test_bad_config", "bad Optuna config / storage (API)"),
    ("tests/test_agent.py::test_bad_config", "bad agent config (API)"),
]
QUICK_K = "inputs or weights_only or only_from"  # --quick: bad inputs and safety, no worker processes


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda (unavailable)"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collectable(nodes: list[str]) -> tuple[list[str], list[str]]:
    """The node ids pytest finds (tests elsewhere may be renamed) and the missing ones."""
    files = sorted({n.split("::")[0] for n in nodes if (ROOT / n.split("::")[0]).exists()})
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          *files], cwd=ROOT, capture_output=True, text=True)
    found = {line.split("[")[0] for line in out.stdout.splitlines() if "::" in line}
    return [n for n in nodes if n in found], [n for n in nodes if n not in found]


def run_tests(paths: list[str], counts: Path, junit: Path, k: str | None) -> tuple[int, str]:
    env = dict(os.environ, AMC_RELIABILITY_OUT=str(counts))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", "-rs", *paths]
    if k:
        cmd += ["-k", k]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    rc = 0 if out.returncode == 5 else out.returncode  # 5: nothing collected (e.g. every node deselected)
    return rc, out.stdout[-4000:] + out.stderr[-2000:]


def junit_cases(junit: Path) -> list[dict]:
    cases = []
    for tc in ET.parse(junit).getroot().iter("testcase"):
        status = "passed"
        for child in tc:
            if child.tag in ("failure", "error"):
                status = "failed"
            elif child.tag == "skipped":
                status = "skipped"
        path = tc.get("classname", "").replace(".", "/") + ".py"
        cases.append({"node": f"{path}::{tc.get('name')}", "status": status, "seconds": float(tc.get("time", 0))})
    return cases


def versions() -> dict[str, str]:
    import optuna
    import stable_baselines3
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "optuna": optuna.__version__,
           "stable_baselines3": stable_baselines3.__version__}
    try:
        import psycopg2

        out["psycopg2"] = psycopg2.__version__.split()[0]
    except ImportError:
        out["psycopg2"] = "missing"
    from tests import pg

    bindir = pg.bin_dir()
    if bindir is not None:
        v = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True).stdout
        found = re.search(r"\d+\.\d+", v)
        out["postgresql"] = found.group(0) if found else "?"
    return out


def summarise(records: list[dict], cases: list[dict], elsewhere: list[tuple[str, str]]) -> dict:
    workers = [r for r in records if r["kind"] == "workers"]
    kills = [r for r in records if r["kind"] == "kill"]
    bad = [r for r in records if r["kind"] == "bad_input"]
    safety = [r for r in records if r["kind"] == "safety"]
    other = []
    for node, label in elsewhere:
        mine = [c for c in cases if c["node"] == node or c["node"].startswith(node + "[")]
        for c in mine:
            other.append({"label": label, "case": c["node"].split("::", 1)[1], "status": c["status"]})
    failed = [c for c in cases if c["status"] == "failed"]
    skipped = [c for c in cases if c["status"] == "skipped"]
    return {
        "workers_x_trials": [f"{r['workers']} x {r['completed']} ({r['storage']})" for r in workers],
        "kills_survived": sum(int(r.get("kills", 0)) for r in kills),
        "bad_input_classes": len(bad) + sum(o["status"] == "passed" for o in other),
        "bad_input_classes_here": len(bad),
        "bad_input_classes_elsewhere": sum(o["status"] == "passed" for o in other),
        "safety_checks": len(safety),
        "results_lost": sum(int(r.get("lost", 0)) for r in records),
        "tests_passed": sum(c["status"] == "passed" for c in cases),
        "tests_failed": len(failed),
        "tests_skipped": len(skipped),
        "failed": [c["node"] for c in failed],
        "skipped": [c["node"] for c in skipped],
        "workers": workers, "kills": kills, "bad_inputs": bad, "safety": safety, "elsewhere": other,
    }


def render(s: dict, meta: dict) -> str:
    lines = ["# Reliability", "",
             f"Measured by `python benchmarks/reliability.py{' --quick' if meta['quick'] else ''}` on "
             f"{meta['device_name']} ({meta['date']}); every number below is a check the test suite ran and "
             "held (`tests/test_reliability*.py` write them; bad-input tests elsewhere counted from pytest's "
             "results). Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".", "",
             "| what | held |", "|---|---|",
             "| workers x completed trials on one study | "
             f"{', '.join(s['workers_x_trials']) or 'not run'} |",
             f"| kills survived (SIGKILL, then resume) | {s['kills_survived']} |",
             f"| bad-input classes tried | {s['bad_input_classes']} ({s['bad_input_classes_here']} in the "
             f"reliability tests, {s['bad_input_classes_elsewhere']} in the module tests) |",
             f"| safety checks | {s['safety_checks']} |",
             f"| results lost | **{s['results_lost']}** |",
             f"| tests passed / failed / skipped | {s['tests_passed']} / {s['tests_failed']} / {s['tests_skipped']} |",
             ""]
    if s["failed"]:
        lines += ["**Failed:** " + ", ".join(f"`{n}`" for n in s["failed"]), ""]
    if s["skipped"]:
        lines += ["Skipped: " + ", ".join(f"`{n}`" for n in s["skipped"]), ""]
    if s["workers"]:
        lines += ["## Several workers, one study", "",
                  "PostgreSQL: each worker is a separate process running `OptunaSearcher.run()` on the same "
                  "study (fresh database, tables created by the workers themselves, trials started together). "
                  "Held: completed trials exactly as asked, trial numbers unique, no trial finished by both, "
                  "every trial a worker logged as finished is in the study with the same parameters and value, "
                  "baselines enqueued once. SQLite: two searchers start a trial for the one last slot at once; "
                  "the later one is pruned as surplus.",
                  "", "| storage | workers | trials asked | completed | per worker | duplicated | lost |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['storage']} | {r['workers']} | {r['trials_asked']} | {r['completed']} | "
                  f"{' + '.join(map(str, r['per_worker']))} | {r['duplicated']} | {r['lost']} |" for r in s["workers"]]
        lines.append("")
    if s["kills"]:
        lines += ["## Kill and resume", "",
                  "SIGKILL lands inside an evaluation (the workers sleep 0.5-1 s in each, a window for the kill); "
                  "the same command is started again. Optuna: the dead worker's RUNNING trial is failed by the "
                  "heartbeat (1 s interval, 2 s grace) and re-enqueued; every trial completed before the kill "
                  "keeps its parameters and value. AMC agent: resumes from the last checkpoint (agent, replay "
                  "buffer, state) and logs the following episodes; episodes before it are kept unchanged. Export: "
                  "a writer rewriting a ResNet-56 sparse file in a loop is killed; the file in place loads.", "",
                  "| what | kills | asked | done before the kill | done at the end | lost |",
                  "|---|---|---|---|---|---|"]
        for r in s["kills"]:
            asked = r.get("trials_asked", r.get("episodes_asked", ""))
            before = r.get("completed_before_kill", r.get("checkpoint_episodes", ""))
            end = r.get("completed", r.get("episodes", ""))
            lines.append(f"| {r['name']} | {r['kills']} | {asked} | {before} | {end} | {r['lost']} |")
        lines.append("")
    lines += ["## Bad inputs", "",
              "Each gives one clear error: through the CLI exit status 2 and exactly one line on stderr (no "
              "traceback); through the API one `AmcError`; a diverged finetune inside a search is a failed "
              "result with its reason, never the best, and the search reaches its total.", "",
              "| class | where | detail |", "|---|---|---|"]
    for r in s["bad_inputs"]:
        detail = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("kind", "name", "where"))
        lines.append(f"| {r['name']} | {r['where']} | {detail} |")
    for o in s["elsewhere"]:
        lines.append(f"| {o['label']}: `{o['case']}` | module tests | {o['status']} |")
    lines += ["", "## Safety", "", "| check | result |", "|---|---|"]
    for r in s["safety"]:
        detail = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("kind", "name"))
        lines.append(f"| {r['name']} | {detail} |")
    lines += ["", "## Timing", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in meta["seconds"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0], data=False, out="runs/reliability", device=False,
               quick="bad inputs and safety only (no worker processes)")
    p.add_argument("--device", default="cpu", help="recorded only: the tests run on the CPU")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        counts, junit = Path(tmp) / "counts.jsonl", Path(tmp) / "junit.xml"
        t = time.perf_counter()
        elsewhere, missing = collectable([n for n, _ in ELSEWHERE])
        seconds["collect the module tests"] = time.perf_counter() - t
        t = time.perf_counter()
        rc, tail = run_tests(OWN, counts, junit, QUICK_K if args.quick else None)
        seconds["run the reliability tests"] = time.perf_counter() - t
        cases = junit_cases(junit) if junit.exists() else []
        t = time.perf_counter()
        rc2, tail2 = run_tests(elsewhere, counts, junit, None)
        seconds["run the bad-input tests elsewhere"] = time.perf_counter() - t
        cases += junit_cases(junit) if junit.exists() else []
        rc, tail = rc or rc2, tail + tail2
        records = [json.loads(line) for line in counts.read_text().splitlines()] if counts.exists() else []
    t = time.perf_counter()
    summary = summarise(records, cases, [(n, label) for n, label in ELSEWHERE if n in elsewhere])
    summary["missing_module_tests"] = missing
    meta = {"device": args.device, "device_name": device_name(args.device),
            "machine": machine_info(), "quick": args.quick,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "versions": versions(),
            "pytest_exit": rc, "seconds": seconds}
    seconds["render"] = time.perf_counter() - t
    write_report(out, "reliability", {"meta": meta, "summary": summary}, render(summary, meta), stamp=False,
                 default=None, newline=False)
    print(f"wrote {out / 'reliability.md'}: {summary['tests_passed']} passed, {summary['tests_failed']} failed, "
          f"{summary['results_lost']} results lost")
    if rc != 0:
        print(tail, file=sys.stderr)
    return 0 if rc == 0 and summary["results_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
