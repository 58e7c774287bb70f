"""``ddim serve`` end to end in a real headless browser: Debian's Chromium driven by
Playwright (no browser download). The page, served by uvicorn over the bundled conditional
model, samples a grid, walks an interpolation, takes a drawing and edits it (SDEdit, then
inpainting of a marked region), and encodes and decodes it; every image it shows decodes.

Without Chromium the test is skipped, unless ``DDIM_REQUIRE_BROWSER=1`` (as ``.ci/run``
sets after installing it) makes that a failure. ``DDIM_SCREENSHOT=/abs/PATH.png`` keeps the
screenshots of the Sample and Edit tabs as ``PATH-sample.png`` and ``PATH-edit.png`` (the
README's pictures).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("DDIM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

if not Path(CHROMIUM).exists():
    if os.environ.get("DDIM_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"DDIM_REQUIRE_BROWSER=1 but there is no Chromium at {CHROMIUM}")
    pytest.skip("no Chromium (Debian package chromium) to drive", allow_module_level=True)

uvicorn = pytest.importorskip("uvicorn")
playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """The page of ``ddim serve`` over the bundled mnist-cond, on a free local port."""
    import torch

    from ddim.formats.checkpoint import load_pretrained
    from ddim.serve.app import create_app
    from ddim.serve.work import Served

    model, schedule = load_pretrained("mnist-cond")
    app = create_app(Served("mnist-cond", model, schedule, torch.device("cpu"), "fp32"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(url: str) -> Iterator[object]:
    with playwright.sync_playwright() as p:
        args = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        yield page
        browser.close()
        assert not errors, f"the page raised: {errors}"


def screenshot(tab: str, tmp_path: Path) -> str:
    """Where to keep the screenshot of ``tab``: ``$DDIM_SCREENSHOT`` with ``-tab`` before its
    suffix, else a temporary file."""
    wanted = os.environ.get("DDIM_SCREENSHOT")
    path = Path(wanted) if wanted else tmp_path / "page.png"
    return str(path.with_name(f"{path.stem}-{tab}{path.suffix}"))


def shown_png(page: object, selector: str) -> Image.Image:
    """The PNG that the ``<img>`` at ``selector`` shows, decoded (it is a data URL)."""
    src = page.get_attribute(selector, "src")
    assert src.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    image.load()
    natural = page.eval_on_selector(selector, "img => [img.naturalWidth, img.naturalHeight]")
    assert list(image.size) == natural  # the browser decoded it too
    return image


def run_and_wait(page: object, button: str, image: str, timeout_ms: int = 60_000) -> None:
    before = page.get_attribute(image, "src")
    page.click(button)
    page.wait_for_function(
        "([sel, before]) => { const s = document.querySelector(sel).getAttribute('src');"
        " return s && s !== before; }",
        arg=[image, before],
        timeout=timeout_ms,
    )


def test_the_page_starts_from_the_commands_defaults(page: object) -> None:
    """The forms take their defaults from the server, which takes them from the one
    definition the CLI shares: 50 steps, eta 0, ddim; inpainting's DDNM at 20 steps."""
    page.wait_for_function("document.getElementById('model-info').textContent.includes('classes')")
    value = page.input_value
    assert (value("#sample-form input[name=steps]"), value("#sample-form input[name=eta]"),
            value("#solver-select")) == ("50", "0", "ddim")  # fmt: skip
    assert (value("#method-select"), value("#inpaint-form input[name=steps]")) == ("ddnm", "20")
    assert value("#interpolate-form input[name=frames]") == "10"
    assert value("#strength") == "0.6" and page.inner_text("#strength-value") == "0.6"


def test_sample_with_a_class_and_guidance(page: object, tmp_path: Path) -> None:
    page.wait_for_function("document.getElementById('model-info').textContent.includes('classes')")
    assert "mnist-cond: 10 classes, 28×28" in page.inner_text("#model-info")
    page.select_option("#sample-form select[name=class]", "all")
    page.fill("#sample-form input[name=guidance]", "2")
    page.fill("#sample-form input[name=n]", "40")
    page.fill("#sample-form input[name=steps]", "10")
    run_and_wait(page, "#sample-run", "#sample-grid")
    grid = shown_png(page, "#sample-grid")
    assert grid.size == (4 * 30 + 2, 10 * 30 + 2)  # 4 of each class, a row per class
    assert page.inner_text("#sample-status").startswith("40 images: 10 model calls")
    assert page.get_attribute("#sample-progress", "value") == "10"
    page.screenshot(path=screenshot("sample", tmp_path), full_page=True)


def test_interpolate_and_walk_the_slider(page: object) -> None:
    page.click("button[data-tab=interpolate]")
    page.fill("#interpolate-form input[name=frames]", "5")
    page.fill("#interpolate-form input[name=steps]", "5")
    run_and_wait(page, "#interpolate-run", "#interpolate-strip")
    assert shown_png(page, "#interpolate-strip").size == (5 * 30 + 2, 32)
    first = page.get_attribute("#interpolate-frame", "src")
    page.eval_on_selector(
        "#interpolate-slider", "s => { s.value = 4; s.dispatchEvent(new Event('input')); }"
    )
    assert page.get_attribute("#interpolate-frame", "src") != first
    assert shown_png(page, "#interpolate-frame").size == (28, 28)


def draw(page: object, points: list[tuple[float, float]]) -> None:
    """A stroke through ``points`` given as fractions of the canvas."""
    box = page.locator("#draw").bounding_box()
    at = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


def test_draw_then_sdedit_and_inpaint(page: object, tmp_path: Path) -> None:
    page.click("button[data-tab=edit]")
    draw(page, [(0.3, 0.25), (0.7, 0.25), (0.45, 0.8)])  # a 7
    assert page.evaluate("ink.filter(v => v > 0.5).length") > 20
    page.fill("#edit-form input[name=steps]", "20")
    run_and_wait(page, "#edit-run", "#edit-result")
    assert shown_png(page, "#edit-result").size == (28, 28)
    assert "SDEdit: 13 model calls" in page.inner_text("#edit-status")  # strength 0.6

    page.check("input[name=brush][value=region]")
    draw(page, [(0.1, 0.6), (0.9, 0.6), (0.9, 0.9), (0.1, 0.9)])
    assert page.evaluate("region.reduce((a, b) => a + b, 0)") > 50
    page.select_option("#method-select", "replace")
    page.fill("#inpaint-form input[name=steps]", "10")
    run_and_wait(page, "#inpaint-run", "#edit-result")
    out = np.asarray(shown_png(page, "#edit-result").convert("L")).ravel()
    drawn = np.array(page.evaluate("Array.from(ink, v => Math.round(v * 255))"))
    kept = np.array(page.evaluate("Array.from(region, v => v === 0)"))
    assert kept.sum() < 28 * 28 and np.array_equal(out[kept], drawn[kept])  # known pixels
    assert "replace: 10 model calls" in page.inner_text("#edit-status")
    page.screenshot(path=screenshot("edit", tmp_path), full_page=True)


def test_encode_and_decode_the_drawing(page: object) -> None:
    page.click("button[data-tab=encode]")
    page.fill("#encode-form input[name=steps]", "10")
    run_and_wait(page, "#encode-run", "#encode-output")
    assert shown_png(page, "#encode-latent").size == (28, 28)
    assert shown_png(page, "#encode-output").size == (28, 28)
    assert page.inner_text("#encode-status").startswith("per-dim MSE")
    assert ": 20 model calls" in page.inner_text("#encode-status")  # DDIM: 10 up, 10 down
    assert "residual" not in page.inner_text("#encode-status")
    page.fill("#encode-form input[name=fixed_point]", "2")  # 2 more calls a step, going up
    page.click("#encode-run")
    page.wait_for_function(
        "() => document.getElementById('encode-status').textContent.includes(': 40 model calls')",
        timeout=60_000,
    )
    assert "largest fixed-point residual" in page.inner_text("#encode-status")
    page.select_option("#encode-solver", "bdia")  # exact: 10 calls up, 9 down; may look alike
    page.click("#encode-run")
    page.wait_for_function(
        "() => document.getElementById('encode-status').textContent.includes(': 19 model calls')",
        timeout=60_000,
    )
    assert float(page.inner_text("#encode-status").split()[2]) < 1e-8


def test_a_bad_upload_and_a_seed_out_of_range_are_told(page: object, tmp_path: Path) -> None:
    page.click("button[data-tab=edit]")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    page.set_input_files("#upload", str(text))
    page.wait_for_function(
        "() => document.getElementById('upload-status').textContent.includes('notes.txt')"
    )
    status = page.locator("#upload-status")
    assert "notes.txt is not an image this page can read" in status.inner_text()
    assert "error" in status.get_attribute("class")
    page.fill("#edit-form input[name=seed]", "1e20")
    page.click("#edit-run")
    page.wait_for_function(
        "() => document.getElementById('edit-status').textContent.includes('seed must')"
    )
    assert "got 1e20" in page.inner_text("#edit-status")
    page.fill("#edit-form input[name=seed]", "0")


def test_a_page_of_another_origin_cannot_use_the_api(url: str, page: object) -> None:
    """A second local page (another port: another origin) posts to the API as a foreign
    page would (a no-cors form-like POST, and a JSON fetch): both are refused."""
    import http.server

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        second = page.context.browser.new_page()
        seen: list[tuple[str, int]] = []
        second.on("response", lambda r: seen.append((r.request.method, r.status))
                  if "/api/" in r.url else None)  # fmt: skip
        second.goto(f"http://127.0.0.1:{other.server_address[1]}/")
        statuses = second.evaluate(
            """async (api) => {
                const plain = await fetch(api + "api/sample", {method: "POST", mode: "no-cors",
                    headers: {"Content-Type": "text/plain"}, body: '{"n": 1, "steps": 1}'});
                let json;
                try {
                    json = (await fetch(api + "api/sample", {method: "POST",
                        headers: {"Content-Type": "application/json"},
                        body: '{"n": 1, "steps": 1}'})).status;
                } catch (e) { json = "blocked"; }
                return [plain.type, json];
            }""",
            url,
        )
        second.wait_for_timeout(200)
        second.close()
    finally:
        other.shutdown()
    assert statuses == ["opaque", "blocked"]  # no CORS answer: the browser keeps it out
    assert ("POST", 403) in seen and not any(s == 200 for _, s in seen)  # refused: Origin
