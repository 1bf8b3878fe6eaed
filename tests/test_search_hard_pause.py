"""benchmarks/search_hard.py's Pause: the latency task's measurements run while the given processes
are stopped, and those processes are continued afterwards, also when the measurement fails."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from types import SimpleNamespace

import pytest

from benchmarks.search_hard import Pause, _stopped, paused_seconds, register, study_seconds

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/stat")


@pytest.fixture
def other():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_the_others_are_stopped_inside_and_continued_after(other) -> None:
    pause = Pause([other.pid])
    assert not _stopped(other.pid)
    with pause:
        assert _stopped(other.pid)
        with pause:  # re-entrant: the inner exit leaves them stopped
            pass
        assert _stopped(other.pid)
    assert not _stopped(other.pid) and pause.count == 1


def test_a_failing_measurement_still_continues_them(other) -> None:
    with pytest.raises(RuntimeError), Pause([other.pid]):
        raise RuntimeError("measurement failed")
    assert not _stopped(other.pid)


def test_a_process_that_has_gone_is_skipped(other) -> None:
    other.kill()
    other.wait()
    with Pause([other.pid]) as pause:
        assert pause.count == 1
    with Pause([]) as none:  # nothing to pause: a plain measurement
        assert none.count == 0


def test_a_logged_pause_is_taken_out_of_the_stopped_process_time(other, tmp_path) -> None:
    log = tmp_path / "pauses.jsonl"
    before = time.time()
    with Pause([other.pid], log):
        time.sleep(0.2)
    after = time.time()
    (entry,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert entry["pids"] == [other.pid] and before <= entry["start"] < entry["end"] <= after
    stood = paused_seconds(log, other.pid, before, after)
    assert 0.2 <= stood <= after - before
    assert paused_seconds(log, other.pid + 1, before, after) == 0.0  # another process stood still for none of it
    assert paused_seconds(log, other.pid, after, after + 10) == 0.0  # a span after the pause
    half = 0.5 * (entry["start"] + entry["end"])
    assert abs(paused_seconds(log, other.pid, half, after) - (entry["end"] - half)) < 1e-6  # overlap only


def test_a_trial_s_stopped_seconds_are_taken_out_of_the_study_time(tmp_path) -> None:
    log = tmp_path / "pauses.jsonl"
    t0 = datetime(2026, 1, 1, 12, 0, 0)
    trial = SimpleNamespace(datetime_start=t0, datetime_complete=t0.replace(second=30))  # a 30 s trial
    running = SimpleNamespace(datetime_start=t0, datetime_complete=None)  # not finished: not counted
    study = SimpleNamespace(trials=[trial, running])
    a = t0.timestamp()
    log.write_text(json.dumps({"pids": [7], "start": a + 10, "end": a + 50}) + "\n" + "{half a line")
    assert study_seconds(study) == 30.0
    assert study_seconds(study, lambda s, e: paused_seconds(log, 7, s, e)) == 10.0  # stopped 20 of its 30 s
    assert study_seconds(study, lambda s, e: paused_seconds(log, 8, s, e)) == 30.0


def test_a_registered_process_is_stopped_too_and_this_one_never(other, tmp_path) -> None:
    registry = tmp_path / "pause-me"
    with register(registry) as me:  # this process registers itself: a Pause of its own leaves it running
        assert me.exists()
        (registry / str(other.pid)).touch()  # as ``register`` in the other process would
        pause = Pause([], registry=registry)
        assert pause.pids == [other.pid]
        with pause:
            assert _stopped(other.pid)
        assert not _stopped(other.pid) and pause.count == 1
    assert not me.exists()  # gone with the context
