"""Where the shared data and checkpoints are, for a source checkout and an installed package alike.

The shared folder (``datasets/cifar10-jpeg.tar.xz``, ``models/<name>_dense.pt``) is looked for in
this order: ``$AMC_SHARED``; ``../shared`` relative to the current directory (a checkout run from
its root, with the shared folder beside it); ``../shared`` beside the source tree (last resort: it
is meaningless once the package is installed into site-packages). ``$AMC_DATA`` names the data
directly and wins over all of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from amc.errors import AmcError

SHARED_ENV = "AMC_SHARED"
DATA_ENV = "AMC_DATA"
CIFAR_ARCHIVE = Path("datasets") / "cifar10-jpeg.tar.xz"
_SOURCE_SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise AmcError(f"${name} is {value!r}, which does not exist")
    return path


def find_shared() -> Path | None:
    """The shared folder (``$AMC_SHARED``, else ``./../shared``, else the one beside the source
    tree), or None when none exists. A ``$AMC_SHARED`` that does not exist is an error."""
    env = _env_path(SHARED_ENV)
    if env is not None:
        return env
    for candidate in (Path.cwd().parent / "shared", _SOURCE_SHARED):
        if candidate.is_dir():
            return candidate
    return None


def shared_path(*parts: str | Path) -> Path:
    """``parts`` under the shared folder; when there is none, under the source tree's would-be one
    (a path that need not exist: for defaults that are checked where they are used)."""
    return (find_shared() or _SOURCE_SHARED).joinpath(*parts)


def default_data() -> Path:
    """``$AMC_DATA``, else the CIFAR-10 archive in the shared folder; one clear error when neither exists."""
    env = _env_path(DATA_ENV)
    if env is not None:
        return env
    shared = find_shared()
    if shared is not None and (shared / CIFAR_ARCHIVE).exists():
        return shared / CIFAR_ARCHIVE
    raise AmcError(f"no data given: pass --data PATH (an ImageFolder with train/ and test/, a .tar[.gz|.xz] "
                   f"of one, or a torchvision CIFAR-10 root) or set ${DATA_ENV} (or ${SHARED_ENV} to a folder "
                   f"holding {CIFAR_ARCHIVE})")
