"""The web page in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

It opens the page with a token, submits a tiny job through the form (uploaded weights), watches the
progress move, and waits for the finished report with its plot; the screenshot goes to the test's
folder (and to ``$AMC_SERVICE_SCREENSHOT`` when set: ``reports/service.png`` was made that way).
Skipped when Chromium or Playwright is absent.
"""

from __future__ import annotations

import os
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
            assert "trials 6/6" in page.inner_text("#job-progress")
            assert page.locator("#files a", has_text="recipe.yaml").count() == 1
            shot = tmp_path / "service.png"
            page.screenshot(path=str(shot), full_page=False)
            browser.close()
        if os.environ.get("AMC_SERVICE_SCREENSHOT"):
            shutil.copy(shot, os.environ["AMC_SERVICE_SCREENSHOT"])
    finally:
        svc.stop()
