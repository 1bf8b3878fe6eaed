"""Load on the service over loopback: 50 concurrent submissions, then status polls at 200 requests per
second for 60 s, against ``amc serve`` with 2 workers (subprocesses on one SQLite service folder).

The jobs are tiny (a width-8/16 ResNet-8, the sensitivity-picked policy, 512 train images, no finetune,
no ONNX) so that they finish; after the polling phase the script waits (bounded) for the queue to drain
and counts jobs completed, lost (submitted but not done in the end) and duplicated (claimed more than
once; nothing is killed here). The workers run with ``amc worker --nice 10`` (``--worker-nice``): they
share the machine with the server and the load client; the load starts once both say they are ready
(torch and the pipeline imported), so their start-up is not counted as busy. Writes reports/service.json
(the figures, the load average sampled every 5 s while polling); reports/service.md is written from it.

    nice -n 5 .venv/bin/python benchmarks/service_load.py [--jobs 50 --rate 200 --seconds 60 --drain-s 900]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

from benchmarks.harness import ROOT, machine_info, parser, write_json
from tests.test_service_e2e import TINY, Service, tiny_weights

SPEC = {**TINY, "method": "sensitivity", "episodes": 1, "onnx": False, "latency_runs": 1}


async def run_load(svc: Service, jobs: int, rate: float, seconds: float, poll_connections: int) -> dict:
    headers = {"Authorization": f"Bearer {svc.token}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=svc.url, headers=headers, timeout=30, limits=limits) as c:
        up = await c.post("/api/v1/uploads", files={"file": ("tiny.safetensors", tiny_weights())},
                          data={"model": SPEC["model"]})
        up.raise_for_status()
        spec = {**SPEC, "upload": up.json()["id"]}
        t0 = time.perf_counter()
        subs = await asyncio.gather(*(c.post("/api/v1/jobs", json=spec) for _ in range(jobs)))
        submit_s = time.perf_counter() - t0
        ids = [r.json()["id"] for r in subs if r.status_code == 201]
        codes = [r.status_code for r in subs]
    # The pollers: ``poll_connections`` lanes, each its own client on one keep-alive connection, request i
    # going to lane i % lanes at its scheduled time (open loop: one every 1/rate s in all). A lane that is
    # late sends at once, and latency is measured from the SCHEDULED time, so a slow server (or a starved
    # client) shows in the figures instead of silently lowering the rate (no coordinated omission). No
    # shared pool: with one, requests queue for its connections and httpcore checks every queued request
    # and pooled connection on each request (encode/httpx#3215), so a client that fell behind once never
    # caught up (one run: 21 requests/s, p50 164 s, while the server's own p99 was 13 ms).
    lat: list[float] = []
    server: list[float] = []
    worst: dict[int, float] = {}
    loadavg: list[float] = []
    n = int(rate * seconds)
    start = time.perf_counter() + 0.5  # the lanes connect first

    async def lane(k: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=svc.url, headers=headers, timeout=30, limits=limits) as c:
            for i in range(k, n, poll_connections):
                due = start + i / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                try:
                    r = await c.get(f"/api/v1/jobs/{ids[i % len(ids)]}")
                except httpx.HTTPError:  # a timeout on the wire: counted, not fatal
                    codes.append(0)
                    continue
                lat.append((time.perf_counter() - due) * 1000)
                second = int(due - start)  # the worst latency per second of the schedule: when a tail happened
                worst[second] = max(worst.get(second, 0.0), lat[-1])
                codes.append(r.status_code)
                timing = r.headers.get("server-timing", "")  # "app;dur=<ms>": the server's own share
                if timing.startswith("app;dur="):
                    server.append(float(timing.removeprefix("app;dur=")))

    async def sample_load() -> None:  # the machine is shared: how busy it was while we polled
        while True:
            loadavg.append(os.getloadavg()[0])
            await asyncio.sleep(5)

    sampler = asyncio.create_task(sample_load())
    await asyncio.gather(*(lane(k) for k in range(poll_connections)))
    polled_s = time.perf_counter() - start
    sampler.cancel()
    async with httpx.AsyncClient(base_url=svc.url, headers=headers, timeout=30) as c:
        busy = [j for j in (await c.get("/api/v1/jobs", params={"limit": 1000})).json() if j["state"] == "running"]
    return {"ids": ids, "codes": codes, "latencies_ms": lat, "server_ms": server,
            "worst_ms_per_second": [round(worst.get(k, 0.0), 1) for k in range(int(seconds))], "submit_s": submit_s,
            "poll_s": polled_s, "loadavg": loadavg, "running_at_end_of_polling": len(busy)}


def main() -> int:
    ap = parser(__doc__, data=False, out=None, device=False)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--drain-s", type=float, default=900.0, help="longest wait for the jobs to finish")
    ap.add_argument("--poll-connections", type=int, default=8,
                    help="status poll lanes, each one client on one keep-alive connection")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (0: the server alone)")
    ap.add_argument("--worker-nice", type=int, default=10, help="the workers' `amc worker --nice`")
    ap.add_argument("--out", default=str(ROOT / "reports" / "service"), help="the report's stem: OUT.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        svc = Service(Path(tmp) / "svc")
        svc.env["AMC_SERVICE_STALE_S"] = "60"
        svc.env["AMC_SERVICE_HEARTBEAT_S"] = "5"
        svc.serve()
        try:
            for i in range(args.workers):
                svc.start("worker", "--device", "cpu", "--name", f"w{i}", "--nice", str(args.worker_nice))
            t0 = time.time()  # the workers up (torch and the pipeline imported) before the load starts
            logs = [svc.root / f"worker-{i + 1}.log" for i in range(args.workers)]
            while not all(p.exists() and ": ready" in p.read_text() for p in logs):
                if time.time() - t0 > 180 or any(p.poll() is not None for p in svc.procs):
                    raise SystemExit("the workers did not start: " + " | ".join(p.read_text()[-300:] for p in logs))
                time.sleep(0.5)
            res = run_load_sync(svc, args)
            t0 = time.time()
            with svc.client() as c:
                while time.time() - t0 < args.drain_s:
                    listed = c.get("/api/v1/jobs", params={"limit": 1000}).json()
                    if all(j["state"] in ("done", "failed", "cancelled") for j in listed):
                        break
                    time.sleep(2)
                listed = {j["id"]: j for j in c.get("/api/v1/jobs", params={"limit": 1000}).json()}
            drain_s = time.time() - t0
        finally:
            svc.stop()
    ids = res["ids"]
    done = [i for i in ids if listed.get(i, {}).get("state") == "done"]
    lat = sorted(res["latencies_ms"])
    q = statistics.quantiles(lat, n=100) if len(lat) >= 100 else [float("nan")] * 99
    srv = sorted(res["server_ms"])  # the same requests' time inside the app (its Server-Timing header)
    qs = statistics.quantiles(srv, n=100) if len(srv) >= 100 else [float("nan")] * 99
    runs = [listed[i]["progress"].get("elapsed_s") for i in done if listed[i]["progress"].get("elapsed_s")]
    report = {
        "errors_5xx": sum(code >= 500 for code in res["codes"]),
        "errors_4xx": sum(400 <= code < 500 for code in res["codes"]),
        "client_errors": sum(code == 0 for code in res["codes"]),
        "jobs_submitted": len(ids), "jobs_completed": len(done),
        "jobs_lost": sum(i not in listed or listed[i]["state"] != "done" for i in ids),
        "jobs_duplicated": sum(listed[i]["attempts"] > 1 for i in ids if i in listed),
        "status_requests": len(lat), "status_rate_achieved": len(lat) / res["poll_s"],
        "status_p50_ms": q[49], "status_p99_ms": q[98], "status_max_ms": max(lat) if lat else None,
        "status_server_p50_ms": qs[49], "status_server_p99_ms": qs[98],
        "status_worst_ms_per_second": res["worst_ms_per_second"],
        "submit_all_s": res["submit_s"], "drain_s": drain_s,
        "running_at_end_of_polling": res["running_at_end_of_polling"],
        "loadavg_1min_while_polling": res["loadavg"], "benchmark_nice": os.nice(0),
        "worker_nice": os.nice(0) + args.worker_nice,
        "job_wall_s_median": statistics.median(runs) if runs else None,
        "workers": args.workers,
        "poll_connections": args.poll_connections, "jobs": args.jobs, "rate": args.rate, "seconds": args.seconds,
        "spec": SPEC,
        "screenshot": "reports/service.png", "machine": machine_info(),
    }
    out = Path(args.out).with_suffix(".json")
    report["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report["earlier_runs"] = earlier_runs(out)
    write_json(out, report, indent=2, default=str)
    print(json.dumps({k: v for k, v in report.items() if k not in ("spec", "machine")}, indent=2, default=str))
    return 0


KEPT = ("status_rate_achieved", "status_p50_ms", "status_p99_ms", "status_max_ms", "status_server_p50_ms",
        "status_server_p99_ms", "jobs_completed", "jobs_lost", "jobs_duplicated", "errors_5xx", "drain_s",
        "job_wall_s_median", "loadavg_1min_while_polling", "poll_connections", "run_note")


def earlier_runs(path: Path) -> dict:
    """The report's earlier runs, the one ``path`` holds now added to them: a rerun keeps the history."""
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    runs = dict(prev.pop("earlier_runs", {}) or {})
    if prev.get("status_p99_ms") is not None:
        runs[prev.get("measured_at") or f"run {len(runs) + 1}"] = {k: prev[k] for k in KEPT if k in prev}
    return runs


def run_load_sync(svc: Service, args: argparse.Namespace) -> dict:
    return asyncio.run(run_load(svc, args.jobs, args.rate, args.seconds, args.poll_connections))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
