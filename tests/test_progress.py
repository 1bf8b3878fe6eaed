"""Progress messages: one format with a count and an ETA, read back by one parser; every clock here is
a fake one, so nothing depends on this machine's timing."""

from __future__ import annotations

import pytest

from amc.progress import (
    Counter,
    Eta,
    Step,
    duration,
    finetune_steps,
    message,
    parse,
    parse_duration,
    sensitivity_points,
)


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (44.6, "45s"), (80, "1m20s"), (240, "4m"),
                                               (130, "2m10s"), (3900, "1h05m")])
def test_duration_and_back(seconds, text):
    assert duration(seconds) == text
    assert parse_duration(text) == pytest.approx(round(seconds) // 60 * 60 if seconds >= 3600 else round(seconds))


def test_eta_is_the_pace_so_far_times_the_units_left():
    clock = FakeClock()
    eta = Eta(40, clock)
    assert eta.seconds_left(0) is None  # nothing done: no pace yet
    clock.tick(24)
    assert eta.seconds_left(12) == pytest.approx(2 * 28)  # 2 s a unit, 28 left
    resumed = Eta(8, clock, done=5)  # units done before this run do not count toward the pace
    clock.tick(30)
    assert resumed.seconds_left(5) is None and resumed.seconds_left(6) == pytest.approx(60)


@pytest.mark.parametrize(("args", "text"), [
    (("sensitivity", 12, 40, 80.0), "sensitivity 12/40, ETA 1m20s"),
    (("trial", 3, 8, 240.0, "best 71.2%"), "trial 3/8 (best 71.2%), ETA 4m"),
    (("finetune step", 1, 2, 130.0), "finetune step 1/2, ETA 2m10s"),
    (("trial", 8, 8, 5.0), "trial 8/8"),  # done: no ETA
    (("trial", 1, 8, None), "trial 1/8"),
])
def test_message_format_and_parse_round_trip(args, text):
    assert message(*args) == text
    step = parse(text)
    assert step is not None and (step.stage, step.done, step.total) == args[:3]
    eta = args[3] if args[1] < args[2] and args[3] is not None else None
    assert step.eta_s == (pytest.approx(eta) if eta is not None else None)
    assert step.detail == (args[4] if len(args) > 4 else "")


@pytest.mark.parametrize("text", ["profile: resnet20, 0.27 M params", "sensitivity: 125 points in 870.0 s",
                                  "latency (paired): 1.31x faster", "finetune: 13.38% -> 71.20% in 12.0 s", ""])
def test_other_messages_do_not_parse(text):
    assert parse(text) is None


def test_counter_says_count_and_eta():
    clock, said = FakeClock(), []
    counter = Counter(said.append, "trial", 4, clock, every=2)
    for _ in range(4):
        clock.tick(10)
        counter.step()
    assert said == ["trial 2/4, ETA 20s", "trial 4/4"]


def test_sensitivity_points_says_one_message_per_layer():
    clock, said = FakeClock(), []
    on_point = sensitivity_points(said.append, layers=3, ratios=2, clock=clock)
    for name in ("a", "b", "c"):
        for ratio in (0.25, 0.5):
            clock.tick(5)
            on_point(name, ratio, 0.5)
    assert said == ["sensitivity 1/3 (a), ETA 20s", "sensitivity 2/3 (b), ETA 10s", "sensitivity 3/3 (c)"]
    assert parse(said[0]) == Step("sensitivity", 1, 3, 20.0, "a")


def test_finetune_steps_says_about_ten_messages():
    clock, said = FakeClock(), []
    on_step = finetune_steps(said.append, clock)
    for step in range(10, 401, 10):  # amc.train.finetune reports every 10th step
        clock.tick(1)
        on_step(step, 400, 0.5)
    assert len(said) == 10 and said[-1] == "finetune step 400/400 (loss 0.500)"
    assert said[0] == "finetune step 40/400 (loss 0.500), ETA 36s"  # 4 s for 40 steps: 0.1 s a step, 360 left


def test_finetune_progress_reaches_the_callback(tiny_vgg, tiny_splits):
    from amc.train import FinetuneConfig, finetune

    said: list[str] = []
    steps: list[int] = []
    finetune(tiny_vgg, tiny_splits.loader("train", 64, limit=640), FinetuneConfig(epochs=2),
             on_step=lambda s, n, loss: steps.append(s), progress=said.append)
    assert steps == [10, 20]
    assert [parse(m).done for m in said] == [10, 20] and all(parse(m).total == 20 for m in said)
