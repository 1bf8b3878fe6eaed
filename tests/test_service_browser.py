"""The web page in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

It opens the page with a token, submits a tiny job through the form (uploaded weights), watches the
progress move, and waits for the finished report with its plot; the screenshot goes to the test's
folder (and to ``$AMC_SERVICE_SCREENSHOT`` when set: ``reports/service.png`` was made that way).
Skipped when Chromium or Playwright is absent.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.test_service_e2e import TINY, Service, tiny_weights

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = [pytest.mark.timeout(290),
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")]


def test_submit_through_the_form_and_see_the_report(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    svc = Service(tmp_path / "svc")
    svc.serve()
    svc.start("worker", "--device", "cpu")
    weights = tmp_path / "tiny.safetensors"
    weights.write_bytes(tiny_weights())
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1150, "height": 900})
            page.goto(f"{svc.url}/#token={svc.token}")
            page.wait_for_selector("#who:has-text('alice')")
            page.select_option("#f-checkpoint", "")
            page.set_input_files("#f-weights", str(weights))
            page.fill("input[name=model]", TINY["model"])
            page.fill("input[name=budget]", TINY["budget"])
            page.fill("input[name=episodes]", "6")
            page.fill("input[name=finetune_epochs]", "0")
            page.click("details summary")
            for name in ("train_limit", "heldout", "test_limit", "calib_images", "eval_images", "latency_runs"):
                page.fill(f"input[name={name}]", str(TINY[name]))
            page.select_option("select[name=score_on]", "masked")
            page.uncheck("input[name=onnx]")
            page.click("#submit-btn")
            page.wait_for_selector("#job-view:not([hidden])")
            stages = set()
            for _ in range(600):  # until done, noting the stages the page showed on the way
                stages.add(page.inner_text("#job-stage"))
                if page.inner_text("#job-state") == "done":
                    break
                assert page.inner_text("#job-state") != "failed", page.inner_text("#job-error")
                page.wait_for_timeout(300)
            assert page.inner_text("#job-state") == "done"
            jid = page.evaluate("() => location.hash.split('/').pop()")
            with svc.client() as api:  # the form's select reached the job's spec
                assert api.get(f"/api/v1/jobs/{jid}").json()["spec"]["score_on"] == "masked"
            assert len(stages) >= 2, stages  # the progress moved while the page watched
            page.wait_for_selector("#report table")
            page.wait_for_function("() => [...document.querySelectorAll('#report img')].some("
                                   "i => i.complete && i.naturalWidth > 0)", timeout=30_000)
            assert page.locator("#trials-plot circle.trial").count() >= 6
            assert re.search(r"\b\d+/\d+\b", page.inner_text("#job-progress"))  # a stage's count
            report = page.inner_text("#report")  # the report's numbers carry their units
            for unit in (r"\d+\.\d% of dense MACs", r"\d+\.\d\d?x faster", r"\d+(\.\d+)? ms",
                         r"\d+\.\d (KiB|MiB)",
                         r"(final-test half of the test set|test set|test split)",
                         r"no BN recalibration, before finetune",
                         r"after BN recalibration", r"Use it"):
                assert re.search(unit, report), unit
            assert page.locator("#files a", has_text="recipe.yaml").count() == 1
            shot = tmp_path / "service.png"
            page.screenshot(path=str(shot), full_page=False)
            browser.close()
        if os.environ.get("AMC_SERVICE_SCREENSHOT"):
            shutil.copy(shot, os.environ["AMC_SERVICE_SCREENSHOT"])
    finally:
        svc.stop()


def test_upload_a_data_set_through_the_page_and_run_a_job_on_it(tmp_path: Path) -> None:
    """The page's data-set form: upload a small ImageFolder archive, see it listed and picked as the job's
    data, submit a tiny job on it (a model reference with uploaded weights for its 3 classes), read its report."""
    sync_api = pytest.importorskip("playwright.sync_api")
    import torch
    from safetensors.torch import save

    from tests.service_archives import image_folder, tar_of
    from tests.service_models import tiny_resnet

    svc = Service(tmp_path / "svc")
    svc.serve()
    svc.start("worker", "--device", "cpu")
    archive = tmp_path / "shapes.tar.gz"
    archive.write_bytes(tar_of(image_folder(("circle", "square", "star"), train=10, test=8)))
    torch.manual_seed(0)
    weights = tmp_path / "tiny3.safetensors"
    weights.write_bytes(save({k: v.contiguous() for k, v in tiny_resnet(num_classes=3).state_dict().items()}))
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1150, "height": 900})
            errors: list[str] = []  # the console's errors: a failed request (the icon's 404) shows there
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{svc.url}/#token={svc.token}")
            page.wait_for_selector("#who:has-text('alice')")
            page.set_input_files("#d-file", str(archive))
            page.click("#dataset-btn")
            page.wait_for_selector("#datasets td:has-text('shapes.tar.gz')")
            assert "circle, square, star" in page.inner_text("#datasets")
            ds = page.eval_on_selector("#f-data", "s => s.value")
            with svc.client() as api:
                assert [d["id"] for d in api.get("/api/v1/datasets").json()] == [ds]  # picked for the job
            page.select_option("#f-checkpoint", "")
            page.set_input_files("#f-weights", str(weights))
            page.fill("input[name=model]", TINY["model"])
            page.fill("input[name=budget]", TINY["budget"])
            page.fill("input[name=episodes]", "3")
            page.fill("input[name=finetune_epochs]", "0")
            page.click("details summary")
            for name, value in (("calib_images", 16), ("eval_images", 16), ("latency_runs", 3)):
                page.fill(f"input[name={name}]", str(value))
            page.uncheck("input[name=onnx]")
            page.click("#submit-btn")
            page.wait_for_selector("#job-view:not([hidden])")
            for _ in range(600):
                if page.inner_text("#job-state") == "done":
                    break
                assert page.inner_text("#job-state") != "failed", page.inner_text("#job-error")
                page.wait_for_timeout(300)
            assert page.inner_text("#job-state") == "done"
            jid = page.evaluate("() => location.hash.split('/').pop()")
            with svc.client() as api:
                assert api.get(f"/api/v1/jobs/{jid}").json()["spec"]["data"] == ds
            page.wait_for_selector("#report table")
            assert TINY["model"] in page.inner_text("#report")
            page.screenshot(path=str(tmp_path / "datasets.png"), full_page=True)
            assert errors == [], errors
            browser.close()
    finally:
        svc.stop()
