"""Reliability: two worker processes on one PostgreSQL study, SIGKILL in the middle of a trial or an
episode and resume, and no pickle loading of untrusted files.

The workers are real processes (``tests/reliability_worker.py``) running the real searchers on a
tiny VGG; each appends what it finished to a log, which is compared with what the study or the
run folder kept. Each test appends what it held to the counts file (``tests/reliability_counts``)
that ``benchmarks/reliability.py`` renders into ``reports/reliability.md``.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tests import pg
from tests.reliability_counts import record

REPO = Path(__file__).resolve().parents[1]
WORKER_TIMEOUT_S = 120  # a worker that has not finished by then is stuck (they take ~5-20 s)
HEARTBEAT_S, GRACE_S = 1, 2  # Optuna heartbeat every second; a trial 2 s without one is stale


# -- PostgreSQL -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """``$AMC_TEST_POSTGRES_URL`` (CI starts the server), else a server of our own, else skip
    (fail with ``AMC_REQUIRE_POSTGRES=1``): ``tests/pg.py``'s ``server_url``."""
    with pg.server_url() as url:
        yield url


# -- worker processes --------------------------------------------------------------------------------
def spawn(tmp_path: Path, name: str, *args: object) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",  # 2 workers share 2 cores
               PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    with open(tmp_path / f"{name}.err", "w") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "tests.reliability_worker", *map(str, args)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)


def finish(tmp_path: Path, procs: dict[str, subprocess.Popen]) -> None:
    for name, p in procs.items():
        try:
            rc = p.wait(WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        assert rc == 0, f"worker {name} exited {rc}: {(tmp_path / f'{name}.err').read_text()[-2000:]}"


def kill(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)
    assert p.wait(10) == -signal.SIGKILL  # 10 s: SIGKILL cannot be caught; this is only the reaping


def wait_for(what: str, cond: Callable[[], bool], p: subprocess.Popen,
             timeout: float = WORKER_TIMEOUT_S) -> None:
    t_end = time.monotonic() + timeout
    while not cond():
        assert p.poll() is None, f"the worker ended before {what}"
        assert time.monotonic() < t_end, f"timed out waiting for {what}"
        time.sleep(0.1)  # poll every 100 ms


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _states(study: optuna.Study) -> dict[TrialState, int]:
    out: dict[TrialState, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state] = out.get(t.state, 0) + 1
    return out


# -- two workers, one study ---------------------------------------------------------------------------
def test_two_worker_processes_share_one_postgres_study(pg_url, tmp_path):
    url = pg.fresh_database(pg_url, f"amc_two_{os.getpid()}")  # fresh tables: the workers create them
    n = 10  # completed trials asked of the study
    logs = {f"w{i}": tmp_path / f"w{i}.jsonl" for i in range(2)}
    go = tmp_path / "go"
    procs = {name: spawn(tmp_path, name, "optuna", "--storage", url, "--study", "two", "--trials", n,
                         "--seed", i, "--delay", 0.2, "--log", log,  # 0.2 s per trial: they overlap
                         "--ready", tmp_path / f"{name}.ready", "--go", go)
             for i, (name, log) in enumerate(logs.items())}
    for name, p in procs.items():  # both open the study (racing to create its tables), then start together
        wait_for(f"{name} to open the study", (tmp_path / f"{name}.ready").exists, p)
    go.touch()
    finish(tmp_path, procs)
    study = optuna.load_study(study_name="two", storage=url)
    trials = study.get_trials(deepcopy=False)
    complete = {t.number: t for t in trials if t.state == TrialState.COMPLETE}
    assert len(complete) == n  # exactly as asked: no overshoot by the second worker
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # no number given twice
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    seen = {name: [r for r in read_log(log) if r["state"] == "COMPLETE"] for name, log in logs.items()}
    numbers = [r["number"] for rows in seen.values() for r in rows]
    assert len(numbers) == len(set(numbers))  # no trial finished by both workers
    assert set(numbers) == set(complete)  # every trial a worker finished is in the study: none lost
    assert all(seen.values()), "both workers should have finished trials"
    for rows in seen.values():
        for r in rows:
            assert complete[r["number"]].value == pytest.approx(r["value"])
            assert complete[r["number"]].params == pytest.approx(r["params"])
    origins = [t.user_attrs.get("origin") for t in trials]
    assert origins.count("uniform") == 1 and origins.count("sensitivity") == 1  # baselines enqueued once
    record("workers", "optuna on postgresql", storage="postgresql", workers=2, trials_asked=n,
           completed=len(complete), per_worker=[len(r) for r in seen.values()], duplicated=0, lost=0)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask/tell here; optimize() writes heartbeats
def test_a_trial_started_for_a_taken_last_slot_is_pruned_not_completed(tmp_path):
    """Two workers that start the last free trial at the same moment: the later-numbered one is
    surplus and pruned, so the study never holds more COMPLETE trials than asked."""
    from amc.search.optuna import OptunaConfig, OptunaSearcher
    from tests.reliability_worker import make_evaluator

    cfg = OptunaConfig(storage=f"sqlite:///{tmp_path / 'study.db'}", study="slot", n_trials=1,
                       enqueue_sensitivity=False, n_startup_trials=1)
    ev = make_evaluator(0.0)
    a, b = OptunaSearcher(ev, cfg), OptunaSearcher(ev, cfg)
    first, second = a.study.ask(), b.study.ask()  # both in flight for the one slot
    assert not a._surplus(first) and b._surplus(second)
    with pytest.raises(optuna.TrialPruned):
        b.objective(second)
    a.study.tell(first, a.objective(first))
    assert a.completed() == 1 and a.run().trials.state.tolist().count("COMPLETE") == 1
    record("workers", "last slot taken by two workers at once", storage="sqlite", workers=2, trials_asked=1,
           completed=a.completed(), per_worker=[1, 0], duplicated=0, lost=0)


# -- crash and resume ------------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_optuna_worker_killed_mid_trial_resumes(storage, tmp_path, request):
    if storage == "sqlite":
        url = f"sqlite:///{tmp_path / 'study.db'}"
    else:
        url = pg.fresh_database(request.getfixturevalue("pg_url"), f"amc_kill_{os.getpid()}")
    n = 6  # completed trials asked
    args = ["optuna", "--storage", url, "--study", "kill", "--trials", n, "--heartbeat", HEARTBEAT_S,
            "--grace", GRACE_S, "--delay", 1.0]  # 1 s asleep inside each evaluation: the kill lands mid-trial
    first = spawn(tmp_path, "first", *args, "--log", tmp_path / "first.jsonl")
    # one storage (one connection pool) for all the polling: a new one per poll would pile up
    # PostgreSQL connections until the server refuses clients
    store = optuna.storages.RDBStorage(url)
    request.addfinalizer(store.engine.dispose)

    def mid_trial() -> bool:
        try:
            study = optuna.load_study(study_name="kill", storage=store)
        except KeyError:  # not created yet
            return False
        states = _states(study)
        return states.get(TrialState.COMPLETE, 0) >= 2 and states.get(TrialState.RUNNING, 0) == 1

    wait_for("two completed trials and a third running", mid_trial, first)
    time.sleep(0.3)  # well inside the 1 s evaluation
    kill(first)
    study = optuna.load_study(study_name="kill", storage=store)
    before = {t.number: (t.params, t.value) for t in study.trials if t.state == TrialState.COMPLETE}
    (killed,) = [t.number for t in study.trials if t.state == TrialState.RUNNING]
    logged = {r["number"] for r in read_log(tmp_path / "first.jsonl") if r["state"] == "COMPLETE"}
    assert logged == set(before)  # what the worker saw finish is what the study holds

    finish(tmp_path, {"second": spawn(tmp_path, "second", *args, "--log", tmp_path / "second.jsonl")})
    study = optuna.load_study(study_name="kill", storage=store)
    by_number = {t.number: t for t in study.trials}
    assert by_number[killed].state == TrialState.FAIL  # failed by the heartbeat, not left RUNNING
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == pytest.approx(by_number[killed].params)  # the same trial again
    for number, (params, value) in before.items():  # every completed trial kept as it was
        assert by_number[number].state == TrialState.COMPLETE
        assert by_number[number].params == params and by_number[number].value == value
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    record("kill", f"optuna worker, {storage}", storage=storage, kills=1, trials_asked=n,
           completed_before_kill=len(before), completed=len(complete), stale_failed=1, retried=1, lost=0)


def test_agent_killed_after_a_checkpoint_resumes(tmp_path):
    run = tmp_path / "run"
    n = 6  # episodes asked
    args = ["agent", "--run", run, "--episodes", n, "--delay", 0.5]  # checkpoint after every episode

    def state_episodes() -> int:
        try:
            return int(json.loads((run / "state.json").read_text())["episodes"])
        except (OSError, ValueError, KeyError):
            return 0

    first = spawn(tmp_path, "first", *args, "--log", tmp_path / "first.jsonl")
    wait_for("a checkpoint after two episodes", lambda: state_episodes() >= 2, first)
    time.sleep(0.2)  # into the next episode's evaluation
    kill(first)
    done = state_episodes()
    assert 2 <= done < n
    kept = pd.read_csv(run / "episodes.csv").head(done)
    first_log = read_log(tmp_path / "first.jsonl")
    assert [r["episode"] for r in first_log][:done] == list(range(done))

    finish(tmp_path, {"second": spawn(tmp_path, "second", *args, "--log", tmp_path / "second.jsonl")})
    second_log = read_log(tmp_path / "second.jsonl")
    assert [r["episode"] for r in second_log] == list(range(done, n))  # continues from the checkpoint
    final = pd.read_csv(run / "episodes.csv")
    assert list(final.episode) == list(range(n))
    pd.testing.assert_frame_equal(final.head(done)[["episode", "reward"]], kept[["episode", "reward"]])
    assert json.loads((run / "state.json").read_text())["episodes"] == n
    record("kill", "AMC agent", kills=1, episodes_asked=n, checkpoint_episodes=done, episodes=len(final),
           lost=0)


def test_export_killed_midway_leaves_old_file_whole(tmp_path):
    """SIGKILL a process that rewrites a sparse export over and over: the file in place always loads."""
    from amc.export.files import load_sparse
    from tests.reliability_worker import tiny_model

    path = tmp_path / "m.safetensors"
    code = ("import sys\nfrom amc.export.files import save_sparse\nfrom amc.models import build_model\n"
            "m = build_model('resnet56')\nopen(sys.argv[2], 'w').close()\n"
            "while True:\n    save_sparse(m, sys.argv[1], arch='resnet56')\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    ready = tmp_path / "ready"
    p = subprocess.Popen([sys.executable, "-c", code, str(path), str(ready)], cwd=REPO, env=env)
    wait_for("the writer to start", lambda: ready.exists() and path.exists(), p)
    time.sleep(1.0)  # a few more rewrites, then the kill lands somewhere inside one
    kill(p)
    model = load_sparse(path)  # the whole file of some completed write, never half of one
    assert sum(x.numel() for x in model.parameters()) > sum(x.numel() for x in tiny_model().parameters())
    record("kill", "sparse export writer", kills=1, lost=0)


# -- safety: nothing untrusted is unpickled ---------------------------------------------------------------
PACKAGES = ("amc", "search", "envs")


def _calls(name: str) -> Iterator[tuple[Path, ast.Call]]:
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                func = node.func if isinstance(node, ast.Call) else None
                if isinstance(func, ast.Attribute) and func.attr == name:
                    yield path, node


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def test_every_torch_load_is_weights_only():
    loads = [(p, c) for p, c in _calls("load") if isinstance(c.func, ast.Attribute)
             and isinstance(c.func.value, ast.Name) and c.func.value.id in ("torch", "th")]
    assert loads, "the scan found no torch.load at all: amc.models reads checkpoints with it"
    bad = [f"{p.relative_to(REPO)}:{c.lineno}" for p, c in loads if _keyword(c, "weights_only") is not True]
    assert not bad, f"torch.load without weights_only=True: {bad}"
    pickles = [f"{p.relative_to(REPO)}:{c.lineno}" for name in ("load", "loads") for p, c in _calls(name)
               if isinstance(c.func, ast.Attribute) and isinstance(c.func.value, ast.Name)
               and c.func.value.id in ("pickle", "cloudpickle", "dill", "joblib")]
    assert not pickles, f"pickle loading: {pickles}"
    numpy_pickles = [f"{p.relative_to(REPO)}:{c.lineno}" for p, c in _calls("load")
                     if _keyword(c, "allow_pickle") is True]
    assert not numpy_pickles, f"numpy load with allow_pickle=True: {numpy_pickles}"
    sb3 = {p.relative_to(REPO).as_posix() for name in ("load_replay_buffer",) for p, _ in _calls(name)}
    assert sb3 <= {"amc/search/agent.py"}  # SB3 pickles are read in one place, which checks the path
    record("safety", "torch.load weights_only", calls=len(loads), unsafe=0)


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory):
    """A finished 2-episode agent run with a checkpoint after each episode."""
    from amc.search.agent import AgentConfig, run_agent
    from tests.reliability_worker import make_evaluator

    run = tmp_path_factory.mktemp("agent") / "run"
    ev = make_evaluator(0.0)
    run_agent(ev, AgentConfig(episodes=2, warmup_episodes=1, batch_size=4, net_arch=(16, 16),
                              checkpoint_every=1), run)
    return ev, run


@pytest.mark.parametrize("name", ["replay.pkl", "agent.zip"])
@pytest.mark.parametrize("how", ["symlink_outside", "symlink_inside", "missing"])
def test_agent_checkpoints_only_from_the_run_folder(checkpointed_run, tmp_path, name, how):
    from amc.errors import CheckpointError
    from amc.search.agent import AgentConfig, run_agent

    ev, original = checkpointed_run
    run = tmp_path / "run"
    shutil.copytree(original, run)
    target = run / name
    if how == "symlink_outside":  # a planted pickle elsewhere on the machine
        outside = tmp_path / f"elsewhere-{name}"
        shutil.move(target, outside)
        target.symlink_to(outside)
    elif how == "symlink_inside":  # even a link within the folder: only regular files are read
        shutil.move(target, run / f"copy-{name}")
        target.symlink_to(run / f"copy-{name}")
    else:
        target.unlink()
    with pytest.raises(CheckpointError, match=name):
        run_agent(ev, AgentConfig(episodes=3, warmup_episodes=1, batch_size=4, net_arch=(16, 16),
                                  checkpoint_every=1), run)
    record("safety", f"agent {name}: {how}", refused=1)


def test_agent_resumes_from_its_own_regular_files(checkpointed_run, tmp_path):
    from amc.search.agent import AgentConfig, run_agent

    ev, original = checkpointed_run
    run = tmp_path / "run"
    shutil.copytree(original, run)
    res = run_agent(ev, AgentConfig(episodes=3, warmup_episodes=1, batch_size=4, net_arch=(16, 16),
                                    checkpoint_every=1), run)
    assert res.resumed_from == 2 and len(res.episodes) == 3
