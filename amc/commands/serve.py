"""``amc serve``: the HTTP API and the web page (FastAPI under uvicorn); jobs go to the queue for ``amc worker``.

State lives under ``--root`` (default ``service/``): service.db (jobs, tokens), queue.db, runs/, uploads/.
``--db`` and ``--queue`` point at PostgreSQL (or the queue at Redis) for workers on several machines.
"""

from __future__ import annotations

import argparse


def add_service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None, help="service folder (default: $AMC_SERVICE_ROOT or service/)")
    p.add_argument("--db", default=None, help="jobs and tokens database URL (default: sqlite in --root)")
    p.add_argument("--queue", default=None, help="queue URL: sqlite:///FILE (default: in --root), "
                                                 "postgresql://... or redis://...")


def service_config(args: argparse.Namespace, **more: object):  # -> ServiceConfig
    from amc.service.config import ServiceConfig

    return ServiceConfig.from_env(root=args.root, db_url=args.db, queue_url=args.queue, **more)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the HTTP API and web page", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_service_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=None, help="largest weights upload (default 256)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from amc.service.app import create_app

    more = {"max_upload_bytes": int(args.max_upload_mb * (1 << 20))} if args.max_upload_mb else {}
    app = create_app(service_config(args, **more))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
