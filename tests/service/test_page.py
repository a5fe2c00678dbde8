"""The web page in a real browser (headless Chromium): it loads, a job submitted from its form
completes, the viewer draws and redraws when the slice changes, and no request leaves the host."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from browser import is_local, requested_urls, start
from helpers import blobs
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from support import free_port, gateway_healthy, write_nifti

from riir.serve import Child, gateway_argv, spawn

KEY = "browser-key"
# Set RIIR_SCREENSHOTS=DIR to keep the viewer's screenshots (to look at them).
SHOTS = os.environ.get("RIIR_SCREENSHOTS")
SCREENSHOTS = Path(SHOTS) if SHOTS else None


@pytest.fixture(scope="module")
def locked_url(stack_env: dict[str, str], service_dir: Path, worker: Child) -> Iterator[str]:
    """A second gateway on the same Redis, storage and worker, with an API key (so it lists
    jobs, and the page's key field is exercised)."""
    port = free_port()
    with open(service_dir / "gateway-locked.log", "wb") as log:
        child = spawn(
            "gateway",
            gateway_argv("127.0.0.1", port, "warning"),
            {**stack_env, "RIIR_API_KEY": KEY},
            output=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not gateway_healthy(url):
            assert time.monotonic() < deadline and child.process.poll() is None
            time.sleep(0.2)
        yield url
    finally:
        child.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    driver = start(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("page-images")
    fixed, moving = blobs((20, 24, 16), seed=2), blobs((20, 24, 16), seed=3)
    spacing = (1.0, 1.5, 2.0)
    return {
        "fixed": write_nifti(folder / "fixed.nii.gz", fixed, spacing),
        "moving": write_nifti(folder / "moving.nii.gz", moving, spacing),
        "fixed_labels": write_nifti(
            folder / "fixed_labels.nii.gz", (fixed > 0.5).astype(np.int16), spacing, np.int16
        ),
        "moving_labels": write_nifti(
            folder / "moving_labels.nii.gz", (moving > 0.5).astype(np.int16), spacing, np.int16
        ),
    }


Until = Callable[[webdriver.Chrome], object]


def wait(driver: webdriver.Chrome, until: Until, s: float = 60) -> None:
    WebDriverWait(driver, s, poll_frequency=0.2).until(until)


def canvas_png(driver: webdriver.Chrome, name: str) -> np.ndarray:
    time.sleep(0.5)  # NiiVue draws on the next animation frame
    png = driver.find_element(By.ID, "viewer").screenshot_as_png
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / f"{name}.png").write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def redrawn(driver: webdriver.Chrome, before: np.ndarray, name: str) -> float:
    """How much the canvas changed from ``before``: polled, as NiiVue redraws on a later frame."""
    deadline = time.monotonic() + 10
    while True:
        change = float(np.abs(canvas_png(driver, name) - before).mean())
        if change > 0.5 or time.monotonic() > deadline:
            return change


def assert_all_local(driver: webdriver.Chrome, seen: list[str]) -> None:
    seen += requested_urls(driver)
    seen += driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert seen, "the browser's network log is empty: the check would prove nothing"
    assert [url for url in seen if not is_local(url)] == []


def test_docs_render_offline(browser: webdriver.Chrome, gateway_url: str) -> None:
    seen: list[str] = []
    browser.get(f"{gateway_url}/docs")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
    assert_all_local(browser, seen)
    browser.get(f"{gateway_url}/redoc")
    wait(browser, lambda d: "RIIR registration service" in d.find_element(By.TAG_NAME, "body").text)
    assert_all_local(browser, seen)


def test_a_job_from_the_form_is_shown_in_the_viewer(
    browser: webdriver.Chrome, locked_url: str, volumes: dict[str, Path]
) -> None:
    seen: list[str] = []
    browser.get(f"{locked_url}/")
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    # The form is built from the server's OpenAPI schema, which needs the key.
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#submit-form input[name=fixed]"))
    # The series form has its own fields (from the same schema); then back to a pair.
    browser.find_element(By.CSS_SELECTOR, ".tabs button[data-kind=series]").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#submit-form [name=template]"))
    # A yes/no option is a choice, its blank the model's own (keep_still: true, false or "").
    keep = Select(browser.find_element(By.CSS_SELECTOR, "#submit-form [name=keep_still]"))
    assert [o.get_attribute("value") for o in keep.options] == ["", "true", "false"]
    assert keep.first_selected_option.get_attribute("value") == ""
    assert not browser.find_elements(By.CSS_SELECTOR, "#submit-form [name=fixed]")
    browser.find_element(By.CSS_SELECTOR, ".tabs button[data-kind=pair]").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#submit-form [name=fixed]"))
    init = Select(browser.find_element(By.CSS_SELECTOR, "#submit-form [name=init]"))
    schema = httpx.get(f"{locked_url}/openapi.json", headers={"X-API-Key": KEY}).json()
    body = schema["paths"]["/register"]["post"]["requestBody"]["content"]
    prop = body["multipart/form-data"]["schema"]["properties"]["init"]
    enum = next(s["enum"] for s in [prop, *prop.get("anyOf", [])] if "enum" in s)
    values = [o.get_attribute("value") for o in init.options]
    assert [v for v in values if v] == enum  # the choices are the schema's ("": its default)
    form = browser.find_element(By.ID, "submit-form")
    for role, path in volumes.items():
        form.find_element(By.NAME, role).send_keys(str(path))
    Select(form.find_element(By.NAME, "model")).select_by_value("tiny-3d")
    form.find_element(By.NAME, "steps").send_keys("2")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, lambda d: "queued job" in d.find_element(By.ID, "submit-state").text)
    job_id = browser.find_element(By.ID, "submit-state").text.split()[-1]

    # The list (GET /jobs with the key) shows it; its row opens the job page.
    row = f"#jobs tr[data-job='{job_id}']"
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row))
    browser.find_element(By.CSS_SELECTOR, row).click()
    wait(
        browser,
        lambda d: (
            d.find_element(By.TAG_NAME, "body").get_attribute("data-job-status") == "succeeded"
        ),
        120,
    )
    wait(
        browser,
        lambda d: (
            d.find_element(By.TAG_NAME, "body").get_attribute("data-viewer") in ("ready", "error")
        ),
    )
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-viewer") == "ready", (
        browser.find_element(By.ID, "viewer-state").text
    )

    first = canvas_png(browser, "viewer-jacobian")
    # Not blank: many distinct colours, not one flat fill.
    assert len(np.unique(first.reshape(-1, 3), axis=0)) > 50
    assert first.std() > 10
    browser.execute_script(
        "const s = document.getElementById('slice-2'); s.value = 0.15;"
        "s.dispatchEvent(new Event('input'))"
    )
    assert redrawn(browser, first, "viewer-slice") > 0.5  # another slice was drawn
    moved = canvas_png(browser, "viewer-slice")
    Select(browser.find_element(By.ID, "overlay")).select_by_value("checker")
    assert redrawn(browser, moved, "viewer-checker") > 0.5
    checker = canvas_png(browser, "viewer-checker")
    Select(browser.find_element(By.ID, "overlay")).select_by_value("grid-axial")
    assert redrawn(browser, checker, "viewer-grid") > 0.5  # one plane, the grid drawn on it
    grid = canvas_png(browser, "viewer-grid")
    assert (grid[..., 1] > grid[..., 0] + 60).sum() > 50  # the grid's green lines

    if SCREENSHOTS is not None:
        browser.save_screenshot(str(SCREENSHOTS / "job-page.png"))
    metrics = browser.find_element(By.ID, "metrics").text
    assert "similarity_after.ncc" in metrics and "jacobian" in metrics
    downloads = browser.find_element(By.ID, "downloads").text.split()
    assert {"displacement", "warped", "jacobian", "labels", "metrics", "preview"} <= set(downloads)
    assert browser.execute_script("return document.getElementById('preview').naturalWidth") > 100
    # A download is fetched with the key (the viewer itself never loads the transform).
    browser.find_element(By.XPATH, "//ul[@id='downloads']//button[text()='transform']").click()
    transform = f"/jobs/{job_id}/artifacts/transform"
    wait(browser, lambda d: any(url.endswith(transform) for url in requested_urls(d, seen)), 10)
    assert_all_local(browser, seen)
    # No script error; the only failed loads are the 401s before the key was entered.
    errors = [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and "status of 401" not in entry["message"]
    ]
    assert errors == []


DERIVE_CHECKS = """
const done = arguments[arguments.length - 1];
(async () => {
  const d = await import("./static/js/derive.js");
  const n = await import("./static/js/nifti.js");
  const out = {};
  // log|J| and folding: J <= 0 is marked, J > 0 is not; log 1 = 0
  const jac = d.jacobianLayers(Float32Array.from([1, 0, -0.5, 2]));
  out.folding = Array.from(jac.folding);
  out.log = Array.from(jac.log, (v) => +v.toFixed(3));
  // |u| of a 2-voxel, 3-component field stored component-slowest
  out.magnitude = Array.from(d.magnitude(Float32Array.from([3, 0, 4, 0, 0, 2]), 2));
  // a 4 x 4 x 1 checkerboard of tiles of 2 between a (0) and b (1)
  out.checker = Array.from(d.checkerboard(new Float32Array(16), new Float32Array(16).fill(1),
                                          [4, 4, 1]));
  // contours of a 4 x 4 x 1 square of label 1 in a 6 x 6 x 1 image: its ring of 12 voxels
  const labels = new Float32Array(36);
  for (let y = 1; y < 5; y++) for (let x = 1; x < 5; x++) labels[x + 6 * y] = 1;
  out.contour = d.contours(labels, [6, 6, 1]).reduce((a, b) => a + b, 0);
  // a derived image written on a template's grid reads back as written
  const header = new ArrayBuffer(352);
  const view = new DataView(header);
  view.setInt32(0, 348, true);
  [3, 2, 3, 1, 1, 1, 1, 1].forEach((v, i) => view.setInt16(40 + 2 * i, v, true));
  view.setInt16(70, 16, true);
  view.setFloat32(108, 352, true);
  const template = { header: header.slice(0, 348), spatial: [2, 3, 1] };
  const back = await n.readNifti(n.writeLike(template, Float32Array.from([1, 2, 3, 4, 5, 6])));
  out.roundtrip = [Array.from(back.data), back.spatial];
  // the deformation grid of an 8 x 8 x 1 image, lines every 4 voxels along x and y: no
  // field, lines at x, y in {0, 4}; a field that moves every point 1 voxel along +x (LPS:
  // -1 mm in x for an identity RAS grid) moves the x lines to x in {3, 7}
  const eye = [[-1, 0, 0], [0, -1, 0], [0, 0, 1]];
  const still = d.deformationGrid(new Float32Array(8 * 8 * 3), [8, 8, 1], eye, [0, 1]);
  const shift = new Float32Array(8 * 8 * 3);
  for (let v = 0; v < 64; v++) shift[v] = -1;
  const moved = d.deformationGrid(shift, [8, 8, 1], eye, [0]);
  out.grid = [Array.from(still.slice(8, 16)), Array.from(moved.slice(8, 16))];
  out.toVoxel = n.lpsToVoxel(template);
  // metrics.json's table: a shape with ×, a list of frames nested by index, other lists
  const m = await import("./static/js/metrics.js");
  out.metrics = m.metricRows({
    fixed_shape: [128, 96, 1],
    kept_still: [0, 2],
    frame_motion: [{ p95_voxels: 0.81234 }, { p95_voxels: 0 }],
    keep_still: true,
  });
  return out;
})().then(done, (error) => done({ error: String(error) }));
"""


def test_derived_images_are_computed_right_in_the_browser(
    browser: webdriver.Chrome, gateway_url: str
) -> None:
    browser.get(f"{gateway_url}/")
    browser.set_script_timeout(30)
    out = browser.execute_async_script(DERIVE_CHECKS)
    assert "error" not in out, out
    assert out["folding"] == [0, 1, 1, 0]
    assert out["log"] == [0, 0, 0, 0.693]
    assert out["magnitude"] == [5, 2]  # (3, 4, 0) and (0, 0, 2)
    assert out["checker"] == [0, 0, 1, 1] * 2 + [1, 1, 0, 0] * 2
    assert out["contour"] == 12
    assert out["roundtrip"] == [[1, 2, 3, 4, 5, 6], [2, 3, 1]]
    # row y = 1 of the grid: a line only at x = 0, 4 (still), at x = 3, 7 (moved by +1)
    assert out["grid"] == [[1, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0, 1]]
    assert out["toVoxel"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]  # pixdim 1 (0 read as 1), LPS
    assert out["metrics"] == [
        ["fixed_shape", "128 × 96 × 1"],
        ["kept_still", "0, 2"],
        ["frame_motion.0.p95_voxels", "0.8123"],
        ["frame_motion.1.p95_voxels", "0"],
        ["keep_still", "true"],
    ]
