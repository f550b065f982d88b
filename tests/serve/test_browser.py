"""The page of ``lesionsam serve`` in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``)
driven by Selenium, on an oblique, anisotropic synthetic case served from a temporary folder.

The lesion is found on screen the way a person finds it, from the pixels NiiVue drew (a white blob in the axial
view), not from the page's own coordinate code; a real click there must reach the server as a voxel inside that
lesion (ITK order), the overlay must appear on screen, and the mask saved from the page must overlap the lesion.
A shift-click (negative) and a box dragged on a slice are checked the same way.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from lesionsam.data.io import read_image
from lesionsam.inference.session import InteractiveSession
from lesionsam.serve.app import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver); "
    f"found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER}",
)

CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
    "--force-device-scale-factor=1",
)


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[str]:
    """``app`` on a free port of 127.0.0.1 (uvicorn in a thread); yields its base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not start")
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def server(served_case, kit) -> Iterator[str]:
    predictor = kit.bright_predictor()
    with _serving(
        create_app(served_case.root, make_session=lambda volume: InteractiveSession(predictor, volume))
    ) as url:
        yield url


#: Chromium with the network unplugged: every host name but the loopback fails to resolve, no proxy.
OFFLINE_FLAGS = ("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--no-proxy-server")


@contextlib.contextmanager
def _chrome(tmp_path: Path, *flags: str, log_requests: bool = False) -> Iterator[Any]:
    """Headless Chromium (extra ``flags``); ``log_requests`` keeps DevTools' performance log (every request)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, *flags, f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):
        options.add_argument(flag)
    if log_requests:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with _chrome(tmp_path) as driver:
        yield driver


@pytest.fixture
def offline_browser(tmp_path: Path) -> Iterator[Any]:
    """A browser with the network unplugged that records every request its pages make."""
    with _chrome(tmp_path, *OFFLINE_FLAGS, log_requests=True) as driver:
        yield driver


def _requested_urls(driver: Any) -> list[str]:
    """Every URL the page requested since the last call (DevTools' ``Network.requestWillBeSent`` events)."""
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _off_host(urls: list[str]) -> list[str]:
    """The network requests (http, https, ws) among ``urls`` that went anywhere but 127.0.0.1."""
    from urllib.parse import urlsplit

    network = [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss", "ftp")]
    return [u for u in network if urlsplit(u).hostname != "127.0.0.1"]


def _wait(what: str, condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _canvas_pixels(driver: Any) -> np.ndarray:
    """The canvas as drawn on screen: (H, W, 3) uint8 in CSS pixels."""
    from PIL import Image

    png = driver.find_element("id", "viewer").screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _axial_tile(driver: Any) -> tuple[int, int, int, int]:
    """(left, top, width, height) in CSS pixels of NiiVue's axial view."""
    tiles = driver.execute_script(
        "const nv = window.lesionsam.nv; const c = document.getElementById('viewer');"
        "const s = c.width / c.getBoundingClientRect().width;"
        "return nv.screenSlices.filter(t => t.axCorSag === 0)"
        "  .map(t => Array.from(t.leftTopWidthHeight).map(v => v / s))"
    )
    assert len(tiles) == 1, tiles
    left, top, width, height = tiles[0]
    return int(left), int(top), int(width), int(height)


def _white_blob(pixels: np.ndarray, tile: tuple[int, int, int, int]) -> tuple[float, float, np.ndarray]:
    """Centre (x, y), canvas CSS pixels, of the largest white region inside ``tile`` (the lesion as drawn), and that
    region as a mask of the canvas."""
    left, top, width, height = tile
    view = pixels[top : top + height, left : left + width]
    white = (view > 225).all(axis=-1)
    comps, n = ndimage.label(white)
    assert n > 0, "no white lesion visible in the axial view"
    sizes = ndimage.sum(white, comps, range(1, n + 1))
    blob = comps == 1 + int(np.argmax(sizes))
    y, x = ndimage.center_of_mass(blob)
    mask = np.zeros(pixels.shape[:2], bool)
    mask[top : top + height, left : left + width] = blob
    return left + x, top + y, mask


def _click_at(driver: Any, x: float, y: float, *, shift: bool = False) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    canvas = driver.find_element("id", "viewer")
    rect = canvas.rect
    chain = ActionChains(driver).move_to_element_with_offset(canvas, x - rect["width"] / 2, y - rect["height"] / 2)
    if shift:
        chain = chain.key_down(Keys.SHIFT).click().key_up(Keys.SHIFT)
    else:
        chain = chain.click()
    chain.perform()


def _idle_after(driver: Any, count: int) -> dict:
    _wait("the interaction", lambda: driver.execute_script("return window.lesionsam.state.interactions") >= count)
    _wait("the page to be idle", lambda: not driver.execute_script("return window.lesionsam.state.busy"))
    return driver.execute_script("return window.lesionsam.state")


def _overlay(driver: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """The page's label overlay (NiiVue's voxel array, i fastest) as (D, H, W)."""
    values = driver.execute_script("return Array.from(window.lesionsam.state.labels.img)")
    return np.asarray(values, dtype=np.uint16).reshape(shape)


def _server_labels(server: str, sid: str) -> np.ndarray:
    """The server's label map (GET .../labels, read with nibabel) as (D, H, W)."""
    import urllib.request

    import nibabel as nib

    with urllib.request.urlopen(f"{server}/api/sessions/{sid}/labels") as answer:
        image = nib.Nifti1Image.from_bytes(answer.read())
    return np.asarray(image.dataobj).transpose(2, 1, 0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _show_slice_without_crosshair_on(driver: Any, ijk: tuple[int, int, int]) -> None:
    """Show the axial slice through ``ijk`` with the crosshair away from it (so it does not cut the lesion)."""
    driver.execute_script("window.lesionsam.showVoxel(arguments[0])", list(ijk))
    driver.execute_script("window.lesionsam.showVoxel(arguments[0])", [2, 2, ijk[2]])
    time.sleep(0.3)


def test_click_overlay_negative_box_and_save_in_a_real_browser(served_case, server, browser, tmp_path, kit) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    truth = read_image(served_case.image)  # labels of the served case: served_case.labels (D, H, W)
    driver = browser
    driver.get(server + "/")
    _wait("the page", lambda: driver.execute_script("return window.lesionsam && window.lesionsam.ready"))
    Select(driver.find_element("id", "images")).select_by_value("case.nii.gz")
    driver.find_element("id", "open").click()
    _wait("the image", lambda: driver.execute_script("return window.lesionsam.state.labels !== null"))
    _wait("the page to be idle", lambda: not driver.execute_script("return window.lesionsam.state.busy"))

    # 1. a positive click where lesion 1 is drawn
    target = kit.blob_centre_ijk(1)
    _show_slice_without_crosshair_on(driver, target)
    tile = _axial_tile(driver)
    x, y, drawn = _white_blob(_canvas_pixels(driver), tile)
    _click_at(driver, x, y)
    state = _idle_after(driver, 1)
    i, j, k = state["lastClick"]["ijk"]
    assert state["lastClick"]["positive"] and served_case.labels[k, j, i] == 1, state["lastClick"]
    assert k == target[2] and abs(i - target[0]) <= 2 and abs(j - target[1]) <= 2  # ITK order, oblique image
    assert [les["id"] for les in state["lesions"]] == [1]
    shape = served_case.labels.shape
    overlay = _overlay(driver, shape)
    np.testing.assert_array_equal(overlay, _server_labels(server, state["sid"]))  # patched exactly
    assert _dice(overlay == 1, served_case.labels == 1) > 0.8
    n_positive = int((overlay == 1).sum())
    rgb = _canvas_pixels(driver)[drawn].astype(int)  # the pixels where the white lesion was drawn
    red = (rgb[:, 0] > 200) & (rgb[:, 0] - rgb[:, 1] > 40) & (rgb[:, 0] - rgb[:, 2] > 40)
    assert red.mean() > 0.6, f"the overlay does not show on the lesion: {red.mean():.2f} of its pixels are red"
    driver.save_screenshot(str(tmp_path / "after_click.png"))

    # 2. a shift-click (negative) at the same place removes voxels of lesion 1
    _click_at(driver, x, y, shift=True)
    state = _idle_after(driver, 2)
    assert state["lastClick"]["positive"] is False and state["lastClick"]["ijk"] == [i, j, k]
    overlay = _overlay(driver, shape)
    np.testing.assert_array_equal(overlay, _server_labels(server, state["sid"]))
    assert 0 < (overlay == 1).sum() < n_positive and overlay[k, j, i] == 0

    # 3. a box dragged on the axial slice of lesion 2 starts lesion 2
    driver.find_element("id", "new-lesion").click()
    driver.find_element("id", "tool-box").click()
    target2 = kit.blob_centre_ijk(2)
    _show_slice_without_crosshair_on(driver, target2)
    x2, y2, _ = _white_blob(_canvas_pixels(driver), tile)
    canvas = driver.find_element("id", "viewer")
    rect = canvas.rect
    ox, oy = x2 - rect["width"] / 2, y2 - rect["height"] / 2
    half = 14  # CSS pixels: a box around the blob drawn on screen
    ActionChains(driver).move_to_element_with_offset(canvas, ox - half, oy - half).click_and_hold().move_by_offset(
        half, half
    ).move_by_offset(half, half).release().perform()
    state = _idle_after(driver, 3)
    lo, hi = state["lastBox"]["lo"], state["lastBox"]["hi"]
    assert lo[2] == hi[2] == target2[2], state["lastBox"]  # a 2D box on the axial slice k
    assert all(lo[a] < target2[a] < hi[a] for a in (0, 1)), state["lastBox"]
    assert [les["id"] for les in state["lesions"]] == [1, 2]
    overlay = _overlay(driver, shape)
    np.testing.assert_array_equal(overlay, _server_labels(server, state["sid"]))
    assert _dice(overlay == 2, served_case.labels == 2) > 0.8
    driver.save_screenshot(str(tmp_path / "after_box.png"))

    # 4. save from the page: the mask on the input's grid overlaps both lesions
    driver.find_element("id", "save").click()
    _wait("the save", lambda: "Saved" in driver.find_element("id", "status").text)
    mask = read_image(served_case.root / "case_lesions.nii.gz")
    assert mask.same_geometry(truth, atol=1e-6)
    for lesion in (1, 2):
        overlap = ((mask.array == lesion) & (served_case.labels == lesion)).sum()
        assert overlap > 0.5 * (mask.array == lesion).sum() > 0, f"lesion {lesion} misses its blob"
    assert (served_case.root / "case_lesions.prompts.json").is_file()
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_proposals_in_a_real_browser(served_case, browser, kit, tmp_path) -> None:
    from selenium.webdriver.support.ui import Select

    from lesionsam.data.transforms import PreprocessConfig
    from lesionsam.inference.predictor import Predictor

    auto = Predictor(kit.auto_model(), preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5)))
    predictor = kit.bright_predictor()
    app = create_app(served_case.root, make_session=lambda v: InteractiveSession(predictor, v), proposer=auto)
    with _serving(app) as url:
        driver = browser
        driver.get(url + "/")
        _wait("the page", lambda: driver.execute_script("return window.lesionsam && window.lesionsam.ready"))
        assert driver.find_element("id", "proposals-section").is_displayed()
        assert not driver.find_element("id", "proposal-text").is_displayed()  # automatic: no text box
        Select(driver.find_element("id", "images")).select_by_value("case.nii.gz")
        driver.find_element("id", "open").click()
        _wait("the image", lambda: driver.execute_script("return window.lesionsam.state.labels !== null"))
        _wait("the page to be idle", lambda: not driver.execute_script("return window.lesionsam.state.busy"))
        driver.find_element("id", "propose").click()
        _wait("the proposals", lambda: driver.execute_script("return window.lesionsam.state.proposalsVol !== null"))
        driver.execute_script("window.lesionsam.showVoxel(arguments[0])", list(kit.blob_centre_ijk(1)))
        driver.save_screenshot(str(tmp_path / "proposals.png"))
        rows = driver.find_elements("css selector", "#proposals li")
        assert len(rows) == 2
        rows[0].find_elements("tag name", "button")[1].click()  # accept the larger one: blob 1
        state = _idle_after(driver, 1)
        overlay = _overlay(driver, served_case.labels.shape)
        np.testing.assert_array_equal(overlay, _server_labels(url, state["sid"]))
        assert [les["id"] for les in state["lesions"]] == [1]
        assert _dice(overlay == 1, served_case.labels == 1) > 0.75


def test_upload_in_a_real_browser(served_case, server, browser, tmp_path) -> None:
    upload = tmp_path / "outside" / "scan.nii.gz"  # a file from elsewhere, as a person would pick it
    upload.parent.mkdir()
    upload.write_bytes(served_case.image.read_bytes())
    driver = browser
    driver.get(server + "/")
    _wait("the page", lambda: driver.execute_script("return window.lesionsam && window.lesionsam.ready"))
    driver.find_element("id", "upload").send_keys(str(upload))
    _wait("the upload", lambda: driver.execute_script("return window.lesionsam.state.labels !== null"))
    state = driver.execute_script("return window.lesionsam.state")
    assert state["name"] == "scan.nii.gz" and state["size"] == list(served_case.volume.size_ijk)
    image = driver.execute_script("return Array.from(window.lesionsam.state.image.img)")
    np.testing.assert_array_equal(np.asarray(image).reshape(served_case.labels.shape), served_case.volume.array)
    driver.find_element("id", "save").click()
    _wait("the save", lambda: "Saved" in driver.find_element("id", "status").text)
    assert read_image(served_case.root / "scan_lesions.nii.gz").same_geometry(served_case.volume, atol=1e-4)


def test_api_docs_render_offline_from_the_server_alone(served_case, server, offline_browser) -> None:
    """``/docs`` (Swagger UI) with the network unplugged: every request it makes goes to the server itself, and
    every operation of the API is rendered."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{server}/openapi.json") as answer:
        operations = {(method.upper(), path) for path, item in json.load(answer)["paths"].items() for method in item}
    driver = offline_browser
    _requested_urls(driver)  # drop the new tab's own requests
    driver.get(server + "/docs")
    _wait("the docs page to load", lambda: driver.execute_script("return document.readyState") == "complete")
    requested = _requested_urls(driver)
    elsewhere = _off_host(requested)
    assert not elsewhere, f"/docs fetched from outside the server: {elsewhere}"
    assert any(u.endswith("/swagger-ui-bundle.js") for u in requested), requested  # the log did record requests

    def rendered() -> set[tuple[str, str]]:
        return {
            (op["method"], op["path"])
            for op in driver.execute_script(
                "return Array.from(document.querySelectorAll('.opblock')).map(b => ({"
                "method: b.querySelector('.opblock-summary-method').textContent.trim(),"
                "path: b.querySelector('.opblock-summary-path').getAttribute('data-path')}))"
            )
        }

    _wait("the API's operations on /docs", lambda: rendered() >= operations, timeout=60)
    assert rendered() == operations
    requested += _requested_urls(driver)  # Swagger UI fetched openapi.json and rendered: still nothing from outside
    elsewhere = _off_host(requested)
    assert not elsewhere, f"/docs fetched from outside the server: {elsewhere}"
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
