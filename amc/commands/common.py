"""Flags and helpers shared by several subcommands: model/checkpoint/data/device options, progress."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from amc.data import (
    STREAM_ABOVE,
    DataSource,
    Splits,
    decoded_bytes,
    default_device,
    load_images,
    make_splits,
    open_data,
)
from amc.data.holdout import PROTOCOLS, ProtocolRecord, halve_test, resolve_protocol
from amc.data.splits import HELDOUT
from amc.errors import AmcError
from amc.models import load_model
from amc.paths import default_data


def add_model_args(p: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    p.add_argument("checkpoint", nargs=None if checkpoint_required else "?",
                   help="dense checkpoint (.pt state dict or .safetensors)")
    p.add_argument("--model", default=None,
                   help="architecture: vgg8, resnet20, resnet56 or any torchvision model "
                        "(default: guessed from the checkpoint's file name)")


def add_data_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """``required`` is kept for old callers: ``--data`` always falls back to ``default_data()``."""
    p.add_argument("--data", default=None,
                   help="ImageFolder (train/ and test/, optionally val/; any classes and image size), a "
                        ".tar[.gz|.xz] of one, or a torchvision CIFAR-10 root "
                        "(default: $AMC_DATA, else datasets/cifar10-jpeg.tar.xz in $AMC_SHARED or ../shared)")
    p.add_argument("--image-size", type=int, default=None,
                   help="resize every image to this many pixels square (default: the most common size)")
    p.add_argument("--val", default=None,
                   help="validation folder of <class>/<image> used as the held-out split "
                        "(default: DATA/val/ when present, else --heldout train images)")
    p.add_argument("--heldout", type=int, default=None,
                   help="held-out train images for search rewards (default 5,000); giving it asks for "
                        "--protocol heldout")
    p.add_argument("--protocol", choices=PROTOCOLS, default="auto",
                   help="auto (default): with a test set and no validation set, the test set's fixed validation "
                        "half scores the search and its other half gives the final numbers (test-halves); "
                        "heldout: --heldout train images score the search (only honest for a checkpoint that "
                        "never trained on them)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    from amc.commands.options import add_option_flags

    add_option_flags(p, only=("batch_size",))  # the options model's (the finetune's batch size)


def device_of(args: argparse.Namespace) -> torch.device:
    dev = torch.device(args.device) if getattr(args, "device", None) else default_device()
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AmcError("--device cuda asked for, but no CUDA device is available")
    return dev


def load_model_arg(args: argparse.Namespace) -> nn.Module:
    return load_model(args.model, args.checkpoint).to(device_of(args))


def check_distill(weight: float) -> None:
    """``--distill`` is a loss weight: one clear error outside [0, 1] (NaN included)."""
    if not 0 <= weight <= 1:
        raise AmcError(f"--distill is a weight in [0, 1], got {weight}")


def _data_path(args: argparse.Namespace) -> Path:
    return Path(args.data) if getattr(args, "data", None) is not None else default_data()


def load_splits(args: argparse.Namespace) -> Splits:
    """In-memory splits of ``--data`` (``--image-size``, ``--val``, ``--heldout``, ``--device``)."""
    return load_splits_recorded(args)[0]


def load_splits_recorded(args: argparse.Namespace) -> tuple[Splits, ProtocolRecord | None]:
    """``load_splits`` and the record of its protocol (which images score the search, which are
    reported): what a recipe written from these splits records."""
    data = load_images(_data_path(args), image_size=getattr(args, "image_size", None), val=getattr(args, "val", None))
    if resolve_protocol(_protocol(args), data.val_y is not None, len(data.test_y) > 0) == "test-halves":
        halves, record = halve_test(data)
        return make_splits(halves, 0, device=device_of(args)), record
    splits = make_splits(data, heldout=_heldout(args), device=device_of(args))
    return splits, ProtocolRecord("heldout", splits.size("heldout"), splits.size("test"))


def _protocol(args: argparse.Namespace) -> str:
    """``--protocol``; ``auto`` with an explicit ``--heldout`` is the held-out protocol (the user
    asked for that many held-out train images); commands without the flag keep the held-out one."""
    protocol = getattr(args, "protocol", "heldout")
    return "heldout" if protocol == "auto" and getattr(args, "heldout", None) is not None else protocol


def _heldout(args: argparse.Namespace) -> int:
    value = getattr(args, "heldout", None)
    return HELDOUT if value is None else int(value)


def load_source(args: argparse.Namespace) -> DataSource:
    """``load_splits``, or streaming splits (DataLoader workers) for an ImageFolder too big for memory
    (those keep the held-out protocol)."""
    return load_source_recorded(args)[0]


def load_source_recorded(args: argparse.Namespace) -> tuple[DataSource, ProtocolRecord | None]:
    """``load_source`` and the record of its protocol (None for streaming splits)."""
    p = _data_path(args)
    image_size = getattr(args, "image_size", None)
    big = p.is_dir() and (p / "train").is_dir() and decoded_bytes(p, image_size) > STREAM_ABOVE
    if not big and _protocol(args) != "heldout":
        return load_splits_recorded(args)
    source = open_data(_data_path(args), heldout=_heldout(args), device=device_of(args),
                       image_size=getattr(args, "image_size", None), val=getattr(args, "val", None))
    return source, None if big else ProtocolRecord("heldout", source.size("heldout"), source.size("test"))


@contextlib.contextmanager
def progress(description: str, total: int | None = None, every_s: float = 60.0) -> Iterator:
    """Progress on stderr; yields ``advance(n=1, info="", completed=None, total=None)``.

    On a terminal, a rich progress bar. Elsewhere (a log file, CI, ``nohup``) a bar would print
    nothing, so plain lines go out instead: ``description done/total (pct) elapsed info``, at each
    tenth of the total and at least every ``every_s`` seconds while work moves, and once at the end."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        plain = _PlainProgress(description, total, every_s)
        yield plain.advance
        if plain.shown != plain.done:
            plain.line()
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console, transient=False) as prog:
        task = prog.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str = "", completed: int | None = None, total: int | None = None) -> None:
            if completed is not None:
                prog.update(task, completed=completed, total=total, info=info)
            else:
                prog.update(task, advance=n, total=total, info=info)

        yield advance


class _PlainProgress:
    """Plain progress lines for a stderr that is not a terminal (see ``progress``)."""

    def __init__(self, description: str, total: int | None, every_s: float) -> None:
        self.description, self.total, self.every_s = description, total, every_s
        self.done, self.info, self.tenth, self.shown = 0, "", 0, -1
        self.t0 = self.printed_at = time.perf_counter()

    def line(self) -> None:
        pct = f" ({self.done / self.total:.0%})" if self.total else ""
        info = f"  {self.info}" if self.info else ""
        print(f"{self.description} {self.done}/{self.total or '?'}{pct} {time.perf_counter() - self.t0:.0f}s{info}",
              file=sys.stderr, flush=True)
        self.printed_at, self.shown = time.perf_counter(), self.done

    def advance(self, n: int = 1, info: str = "", completed: int | None = None, total: int | None = None) -> None:
        self.done = completed if completed is not None else self.done + n
        self.total = total if total is not None else self.total
        self.info = info
        tenth = int(10 * self.done / self.total) if self.total else 0
        if tenth > self.tenth or time.perf_counter() - self.printed_at >= self.every_s:
            self.tenth = max(self.tenth, tenth)
            self.line()


@contextlib.contextmanager
def finetune_progress(description: str = "finetune") -> Iterator:
    """``progress`` for ``amc.train.finetune``: yields its ``on_step(step, total, loss)`` callback."""
    with progress(description) as advance:
        yield lambda s, n, loss: advance(completed=s, total=n, info=f"loss {loss:.3f}")
