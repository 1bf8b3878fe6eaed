"""The JSON API's routers, one per resource: health, jobs, files (a job's artefacts), uploads, registry."""
