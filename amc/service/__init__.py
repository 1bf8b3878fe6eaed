"""The service: an HTTP API and web page (``amc serve``), a job queue, and workers (``amc worker``).

Lifecycle of a job::

    POST /api/v1/uploads (optional: weights), POST /api/v1/datasets (optional: an ImageFolder archive)
    ->  POST /api/v1/jobs (a JobSpec; its data, weights and model checked)  ->  jobs row "queued"
    + one task on the queue  ->  a worker claims it ("running"; heartbeats)  ->  run_job(spec, run_dir,
    progress)  ->  "done" | "failed" | "cancelled"; GET /api/v1/jobs/{id} shows its progress, and
    /api/v1/jobs/{id}/files/... its artefacts. A job whose worker died (no heartbeat for ``stale_s``) is
    put back on the queue by the next worker's recovery sweep, and its Optuna study (in the run folder)
    continues with every completed trial kept.

Modules: ``config`` (ServiceConfig), ``store`` (jobs and tokens tables, SQLAlchemy), ``auth`` (tokens),
``queue`` (the task queue behind one small interface, huey), ``choices`` (every list of names a job
may use, read from the project's registries at request time), ``jobs`` (JobSpec, progress parsing,
``run_job``: the one call into the pipeline), ``datasets`` (the users' uploaded data sets, unpacked by
``amc.data.archives``; what a job's ``data`` names), ``worker`` (claims, heartbeats, recovery), ``app`` and
``api/`` (the FastAPI app and its routers), ``web/`` (the page and its static files: its option inputs
are built from ``GET /api/v1/options``, its choices from ``GET /api/v1/registry``).
"""
