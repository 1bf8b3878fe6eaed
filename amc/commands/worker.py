"""``amc worker``: run compression jobs from the service's queue, one at a time, until SIGINT / SIGTERM.

Start as many as the machines allow, each with the same ``--root`` / ``--db`` / ``--queue`` as the
server. A job whose worker died is put back on the queue by the next worker's recovery sweep (at start
and every minute) once it has not beaten for ``--stale-s`` seconds; its Optuna study continues.
A worker on the server's machine should run with ``--nice 10``: the search then takes only the CPU time
the server leaves, and status requests stay fast while jobs run.
"""

from __future__ import annotations

import argparse
import os

from amc.commands.serve import add_service_args, service_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run jobs from the service's queue", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_service_args(p)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--name", default=None, help="worker name in the jobs table (default: host:pid)")
    p.add_argument("--stale-s", type=float, default=None, help="heartbeat age of a dead worker's job (default 60)")
    p.add_argument("--heartbeat-s", type=float, default=None, help="heartbeat interval (default 5)")
    p.add_argument("--nice", type=int, default=0, metavar="N",
                   help="lower this worker's CPU priority by N (0-19) so a server beside it stays responsive")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from amc.errors import AmcError
    from amc.service.worker import Worker

    if not 0 <= args.nice <= 19:
        raise AmcError(f"--nice must be in 0..19, got {args.nice}")
    if args.nice:
        os.nice(args.nice)  # this thread's priority; the threads torch starts later inherit it
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("amc.worker").setLevel(logging.INFO)  # one line per job claimed, skipped, over
    cfg = service_config(args, device=args.device, stale_s=args.stale_s, heartbeat_s=args.heartbeat_s)
    cfg.runs.mkdir(parents=True, exist_ok=True)
    worker = Worker(cfg, name=args.name)
    print(f"amc worker {worker.name}: root {cfg.root}, queue {cfg.queue}", flush=True)
    worker.serve()
    return 0
