"""A YOLO-style detector and a tiny synthetic detection-like task, shared by the task tests (and the service's
task plugin test: ``tests.task_models:make_detection_task``)."""

from __future__ import annotations

import torch
from torch import nn

import amc


def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class TinyYolo(nn.Module):
    """Three strides (8, 16, 32), an upsample + concatenate neck, three 1x1 heads; returns a list of three
    tensors of (anchors x (5 + classes)) channels each."""

    def __init__(self, classes: int = 3, anchors: int = 2, width: int = 8) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(conv(3, w, 2), conv(w, 2 * w, 2), conv(2 * w, 2 * w, 2))  # stride 8
        self.down16 = conv(2 * w, 4 * w, 2)
        self.down32 = conv(4 * w, 4 * w, 2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.neck16 = conv(8 * w, 4 * w)
        self.neck8 = conv(6 * w, 2 * w)
        out = anchors * (5 + classes)
        self.head8, self.head16, self.head32 = (nn.Conv2d(c, out, 1) for c in (2 * w, 4 * w, 4 * w))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p8 = self.stem(x)
        p16 = self.down16(p8)
        p32 = self.down32(p16)
        n16 = self.neck16(torch.cat([self.up(p32), p16], 1))
        n8 = self.neck8(torch.cat([self.up(n16), p8], 1))
        return [self.head8(n8), self.head16(n16), self.head32(p32)]


def make_yolo() -> TinyYolo:
    torch.manual_seed(0)
    return TinyYolo().eval()


class Counter:
    """How often the task's functions ran."""

    def __init__(self) -> None:
        self.evaluate = self.finetune = self.test = 0


def detection_task(counter: Counter | None = None, size: int = 64, n: int = 8) -> amc.Task:
    """A deterministic detection-like task: fixed random images and fixed random target maps; the score is
    minus the mean squared error of the three outputs against them (higher is better)."""
    counter = counter or Counter()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=g)
    with torch.no_grad():
        shapes = [t.shape[1:] for t in make_yolo()(images[:1])]
    targets = [torch.randn(n, *s, generator=g) * 0.1 for s in shapes]

    def loss(model: nn.Module, batch) -> torch.Tensor:
        x, ys = batch
        return sum(nn.functional.mse_loss(o, y) for o, y in zip(model(x), ys, strict=True))  # type: ignore[return-value]

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        counter.evaluate += 1
        return -float(loss(model, (images, targets)))

    def finetune(model: nn.Module, epochs: float) -> None:
        counter.finetune += 1
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        model.train()
        for _ in range(2):
            opt.zero_grad()
            loss(model, (images, targets)).backward()
            opt.step()
        model.eval()

    def test(model: nn.Module) -> float:
        counter.test += 1
        return evaluate(model)

    calibration = [(images[i:i + 4], [y[i:i + 4] for y in targets]) for i in range(0, n, 4)]
    return amc.Task(example_inputs=images[:1], evaluate=evaluate, calibration=calibration, finetune=finetune,
                    test=test, name="detection", metric="-mse")


def make_detection_task() -> amc.Task:
    """A task factory (what an operator registers in the service)."""
    return detection_task()
