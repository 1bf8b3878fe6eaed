"""``amc worker``: run compression jobs from the service's queue, one at a time, until SIGINT / SIGTERM.

Start as many as the machines allow, each with the same ``--root`` / ``--db`` / ``--queue`` as the
server. A job whose worker died is put back on the queue by the next worker's recovery sweep (at start
and every minute) once it has not beaten for ``--stale-s`` seconds; its Optuna study continues.
"""

from __future__ import annotations

import argparse

from amc.commands.serve import add_service_args, service_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run jobs from the service's queue", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_service_args(p)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--name", default=None, help="worker name in the jobs table (default: host:pid)")
    p.add_argument("--stale-s", type=float, default=None, help="heartbeat age of a dead worker's job (default 60)")
    p.add_argument("--heartbeat-s", type=float, default=None, help="heartbeat interval (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from amc.service.worker import Worker

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = service_config(args, device=args.device, stale_s=args.stale_s, heartbeat_s=args.heartbeat_s)
    cfg.runs.mkdir(parents=True, exist_ok=True)
    worker = Worker(cfg, name=args.name)
    print(f"amc worker {worker.name}: root {cfg.root}, queue {cfg.queue}", flush=True)
    worker.serve()
    return 0
