"""benchmarks/search_hard.py's Pause: the latency task's measurements run while the given processes
are stopped, and those processes are continued afterwards, also when the measurement fails."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.search_hard import Pause, _stopped

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
