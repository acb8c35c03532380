"""The web dashboard (/ui) in a real headless Chromium (Debian's, driven by Playwright)
against the running service: sign in, open a running job, watch its curve gain a point, open
the report, download the student; teachers with their layers, datasets with their shapes.

``KDSERVE_UI_SCREENSHOTS=1`` also saves the job page and the report to ``docs/img/`` (the
committed screenshots come from such a run; a plain run leaves docs alone).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from client import KDServeClient
from tests.e2e.stack import (
    DIGITS,
    KDSERVE,
    ROOT,
    STUDENT,
    TEACHER,
    Stack,
    flush_redis,
    service_env,
    upload_digits,
    wait_job,
)
from tests.pg import fresh_database
from tests.s3 import free_port

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright downloads no browser
SCREENSHOTS = ROOT / "docs" / "img"
REDIS_URL = "redis://127.0.0.1:6379/8"  # a database of its own (other modules flush theirs)
EPOCHS = 15  # enough to watch live; each is a fraction of a second on digits


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if os.environ.get("KDSERVE_TEST_REQUIRE_CHROMIUM"):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (CI installs it)")
    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium refuses its own sandbox.
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API + worker on Postgres and Redis with local storage: artifacts stream from the API
    itself (on S3 a download is a redirect to the bucket; see docs/service.md, Dashboard)."""
    home = tmp_path_factory.mktemp("stack")
    with fresh_database("kdserve_ui") as db_url:
        env = service_env(
            home, database_url=db_url, broker_url=REDIS_URL, port=free_port(), extra={}
        )
        try:
            with Stack(home=home, env=env, port=int(env["KDSERVE_API_PORT"])).serving() as stack:
                yield stack
        finally:
            flush_redis(REDIS_URL)


@pytest.fixture(scope="module")
def teacher(
    stack: Stack, digits: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[KDServeClient, dict[str, str], dict[str, Any]]:
    """A tenant with the digits datasets and a small teacher, trained by the engine's command
    line (2 epochs, safetensors only: a service job would spend most of its time exporting
    and timing a model nobody downloads) while the datasets validate, then uploaded."""
    out = tmp_path_factory.mktemp("teacher")
    config = out / "scratch.json"
    config.write_text('{"method": "scratch", "epochs": 2, "batch_size": 64, "seed": 0}')
    train = subprocess.Popen(
        [
            KDSERVE, "train", "--arch", str(DIGITS / "teacher.json"),
            "--data", str(digits / "digits-train.npz"), "--config", str(config),
            "--out", str(out / "run"), "--formats", "safetensors",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    alice = stack.new_tenant("alice")
    data = upload_digits(alice, digits)
    log, _ = train.communicate(timeout=300)
    assert train.returncode == 0, log.decode(errors="replace")
    uploaded = alice.upload_teacher(
        out / "run" / "student.safetensors",
        input_shape=(1, 8, 8),
        num_classes=10,
        arch=TEACHER,
        name="digits teacher",
    )
    ready = alice.wait_for("teachers", uploaded["id"], timeout=120)
    assert ready["status"] == "ready", ready
    return alice, data, ready


def sign_in(page: Page, stack: Stack, key: str | None) -> None:
    assert key
    page.goto(f"{stack.url}/ui/")
    page.fill("#api-key", key)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#nav")).to_be_visible()


def points(page: Page) -> int:
    return int(page.locator("#curves").get_attribute("data-points") or 0)


def wait_points(page: Page, more_than: int, timeout: float) -> int:
    """Wait until the job page's curves hold more than ``more_than`` epochs (polled here: the
    page's CSP forbids the eval that ``wait_for_function`` needs, as it should)."""
    deadline = time.monotonic() + timeout
    while (seen := points(page)) <= more_than:
        assert time.monotonic() < deadline, f"still {seen} points after {timeout} s"
        page.wait_for_timeout(100)
    return seen


def screenshot(target: Page | Any, name: str) -> None:
    if os.environ.get("KDSERVE_UI_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        target.screenshot(path=str(SCREENSHOTS / name))


def test_sign_in_watch_a_running_job_read_its_report_and_download_the_student(
    stack: Stack,
    browser: Browser,
    teacher: tuple[KDServeClient, dict[str, str], dict[str, Any]],
    tmp_path: Path,
) -> None:
    alice, data, teacher_row = teacher
    job = alice.submit_job(
        student=STUDENT,
        teacher_id=teacher_row["id"],
        name="kd student",
        config={"method": "kd", "epochs": EPOCHS, "batch_size": 64, "temperature": 4, "alpha": 0.5},
        **data,
    )
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(f"{stack.url}/ui/")
    expect(page.locator("#sign-in")).to_be_visible()
    page.fill("#api-key", "kds_not-a-key")
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#sign-in [role=alert]")).to_contain_text("refused")
    sign_in(page, stack, alice.api_key)

    wait_job(alice, job["id"], lambda j: j["status"] == "running", timeout=120)
    row = page.locator(f"#jobs tr[data-job-id='{job['id']}']")
    expect(row).to_be_visible(timeout=10_000)
    row.locator("a").click()
    expect(page.locator("#job-status")).to_have_text("running", timeout=10_000)

    # Live: the curve gains a point from the event stream while the job runs.
    seen = wait_points(page, 0, timeout=60)
    assert alice.get_job(job["id"])["status"] == "running", (
        "the job ended before it could be watched"
    )
    wait_points(page, seen, timeout=30)
    expect(page.locator("#curves section[data-stage='kd'] .uplot")).to_have_count(
        2
    )  # loss, accuracy

    # Done: every epoch drawn, the report and the artifacts appear without a reload.
    report = page.locator("#report")
    expect(report).to_be_visible(timeout=300_000)  # a busy machine trains slowly
    expect(page.locator("#job-status")).to_have_text("succeeded")
    assert points(page) == EPOCHS
    screenshot(page, "dashboard-job.png")
    report.locator("summary").click()
    table = page.locator("#report-table")
    expect(table).to_be_visible()
    expect(table.locator("thead")).to_contain_text("teacher")
    expect(table.locator("thead")).to_contain_text("student")
    served = alice.job_report(job["id"])
    accuracy = table.locator("tbody tr").first.locator("td")
    assert float(accuracy.nth(1).inner_text()) == pytest.approx(
        served["student"]["accuracy"], abs=1e-3
    )
    assert float(accuracy.nth(0).inner_text()) == pytest.approx(
        served["teacher"]["accuracy"], abs=1e-3
    )
    screenshot(report, "dashboard-report.png")

    with page.expect_download() as info:
        page.click("#artifacts a.download[data-name='student.safetensors']")
    download = info.value
    assert download.suggested_filename == "student.safetensors"
    saved = tmp_path / "student.safetensors"
    download.save_as(saved)
    listed = {a["name"]: a for a in alice.list_artifacts(job["id"])}
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == listed["student.safetensors"]["sha256"]
    page.close()


def test_teachers_show_their_layers_and_datasets_their_shapes(
    stack: Stack, browser: Browser, teacher: tuple[KDServeClient, dict[str, str], dict[str, Any]]
) -> None:
    alice, _, teacher_row = teacher
    page = browser.new_page()
    sign_in(page, stack, alice.api_key)
    page.goto(f"{stack.url}/ui/#/teachers")
    entry = page.locator(f"details[data-teacher-id='{teacher_row['id']}']")
    entry.locator("summary").click()
    layers = entry.locator("tbody tr")
    expect(layers).to_have_count(len(teacher_row["layers"]))
    first = teacher_row["layers"][0]
    expect(layers.first).to_contain_text(first["path"])
    expect(layers.first).to_contain_text("×".join(map(str, first["shape"])))

    page.goto(f"{stack.url}/ui/#/datasets")
    expect(page.locator("#datasets tbody tr")).to_have_count(2)
    expect(page.locator("#datasets")).to_contain_text("1×8×8")
    page.close()
