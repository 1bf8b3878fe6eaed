"""Progress of the long stages, one message format with a count and an ETA, and its parser.

Every stage longer than a few seconds (the sensitivity scan, the search, the finetune) says how far it
is through the one ``progress(message: str)`` channel that reaches the CLI, the API's ``progress=``
and the service, in one format:

    "sensitivity 12/40 (features.3.conv), ETA 1m20s"
    "trial 3/8 (best 71.2%), ETA 4m"
    "finetune step 120/400 (loss 0.532), ETA 2m10s"

that is ``STAGE DONE/TOTAL[ (DETAIL)][, ETA DURATION]`` (``message``); ``parse`` reads one back
(``Step``: stage, done, total, eta_s, detail), so the service's progress tracker and the page need
no second format.

Lifecycle: ``eta = Eta(total, clock)`` at the stage's start -> ``eta.seconds_left(done)`` after each
unit (elapsed per unit so far x units left; None before the first) -> ``message(stage, done, total,
eta_s, detail)``. ``Counter(say, stage, total)`` does all three; ``sensitivity_points(say, layers,
ratios)`` is the ``on_point(name, ratio, accuracy)`` of ``Evaluator.sensitivity`` and says one message
per layer scanned. The clock is injectable (``clock=``), so tests never depend on real timing.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

Say = Callable[[str], None]
Clock = Callable[[], float]


def duration(seconds: float) -> str:
    """A duration for people: ``"45s"``, ``"1m20s"``, ``"4m"``, ``"1h05m"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        m, r = divmod(s, 60)
        return f"{m}m{r:02d}s" if r else f"{m}m"
    h, r = divmod(s, 3600)
    return f"{h}h{r // 60:02d}m"


def parse_duration(text: str) -> float | None:
    """The seconds of a ``duration`` string (None when it is not one)."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    if not m or not any(m.groups()):
        return None
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return float(3600 * h + 60 * mi + s)


def message(stage: str, done: int, total: int, eta_s: float | None = None, detail: str = "") -> str:
    """The one progress message: ``"trial 3/8 (best 71.2%), ETA 4m"``."""
    text = f"{stage} {done}/{total}"
    if detail:
        text += f" ({detail})"
    if eta_s is not None and math.isfinite(eta_s) and done < total:
        text += f", ETA {duration(eta_s)}"
    return text


@dataclass(frozen=True)
class Step:
    """A progress message read back: the stage, units done of the total, the seconds left (None when
    the message gave no ETA) and the detail in brackets."""

    stage: str
    done: int
    total: int
    eta_s: float | None = None
    detail: str = ""


_MESSAGE = re.compile(r"^(?P<stage>[a-z][a-z _-]*?) (?P<done>\d+)/(?P<total>\d+)"
                      r"(?: \((?P<detail>[^)]*)\))?(?:, ETA (?P<eta>\w+))?$")


def parse(text: str) -> Step | None:
    """The ``Step`` a ``message`` says, or None for any other message ("profile: ...")."""
    m = _MESSAGE.match(text.strip())
    if m is None:
        return None
    eta = parse_duration(m["eta"]) if m["eta"] else None
    return Step(m["stage"], int(m["done"]), int(m["total"]), eta, m["detail"] or "")


class Eta:
    """Seconds left in a stage of ``total`` units: the elapsed time per unit done so far times the
    units left. ``clock`` (default ``time.monotonic``) is read at creation and at each call."""

    def __init__(self, total: int, clock: Clock = time.monotonic, done: int = 0) -> None:
        self.total, self.clock = total, clock
        self.start, self.done0 = clock(), done  # units done before this run (a resumed search) do not count

    def seconds_left(self, done: int) -> float | None:
        units = done - self.done0
        if units <= 0:
            return None
        return (self.clock() - self.start) / units * max(self.total - done, 0)


class Counter:
    """Counts the units of one stage and says ``message(stage, done, total, eta, detail)`` through ``say``
    after every ``every``-th unit and the last one."""

    def __init__(self, say: Say, stage: str, total: int, clock: Clock = time.monotonic, every: int = 1,
                 done: int = 0) -> None:
        self.say, self.stage, self.total, self.every = say, stage, total, max(1, every)
        self.done = done
        self.eta = Eta(total, clock, done)

    def step(self, detail: str = "", units: int = 1) -> None:
        self.at(self.done + units, detail)

    def at(self, done: int, detail: str = "") -> None:
        self.done = done
        if done % self.every == 0 or done >= self.total:
            self.say(message(self.stage, done, self.total, self.eta.seconds_left(done), detail))


def sensitivity_points(say: Say, layers: int, ratios: int, clock: Clock = time.monotonic
                       ) -> Callable[[str, float, float], None]:
    """The ``on_point(name, ratio, accuracy)`` of ``Evaluator.sensitivity`` (``amc.sensitivity.scan_each``),
    which scores ``ratios`` points per layer in order: one message per layer scanned,
    ``"sensitivity 3/31 (features.3.conv), ETA 1m20s"``, its ETA from the points done."""
    eta = Eta(layers * ratios, clock)
    points = 0

    def on_point(name: str, ratio: float, accuracy: float) -> None:
        nonlocal points
        points += 1
        if points % ratios == 0 or points >= layers * ratios:
            left = eta.seconds_left(points)
            say(message("sensitivity", min(-(-points // ratios), layers), layers, left, name))

    return on_point


def finetune_steps(say: Say, clock: Clock = time.monotonic, messages: int = 10
                   ) -> Callable[[int, int, float], None]:
    """The ``on_step(step, total, loss)`` of ``amc.train.finetune`` (made when the finetune starts: the
    clock starts here): about ``messages`` messages over the finetune and one at its last step,
    ``"finetune step 120/400 (loss 0.532), ETA 2m10s"``."""
    start = clock()
    said = 0

    def on_step(step: int, total: int, loss: float) -> None:
        nonlocal said
        tenth = step * messages // max(total, 1)
        if step >= total or tenth > said:
            said = tenth
            left = (clock() - start) / step * (total - step) if step > 0 else None
            say(message("finetune step", step, total, left, f"loss {loss:.3f}"))

    return on_step
