"""advseg serve in a real headless browser (Debian's chromium and its driver, through selenium): an uploaded
sketch comes back as `advseg colorize` colours it, strokes drawn on the canvas become an image, bad uploads
get a message while the server keeps serving, and the HTTP API works from a script."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from advseg_cli.colorize import ColorizeConfig, colorize_folder
from advseg_cli.export import ExportConfig, export_model
from advseg_cli.optional import install_hint
from tests.colorize.kit import CPU, result_of, save_public, tiny_generator, write_sketches
from tests.helpers import REPO
from tests.serve.kit import answers, free_port, huge_png

pytest.importorskip("gradio", reason=f"advseg serve needs {install_hint('gradio')}")
webdriver = pytest.importorskip("selenium.webdriver", reason=f"the browser test needs {install_hint('selenium')}")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="needs Debian's chromium and its driver: `make browser` "
                                       "(apt-get install chromium chromium-driver)")
SIZE = 64  # the page's network side (--size), also colorize's
SCREENSHOT = os.environ.get("ADVSEG_SERVE_SCREENSHOT")  # also save the page here (docs/images/serve_page.png)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An exported tiny generator (what the page serves) and sketches to upload."""
    root = tmp_path_factory.mktemp("serve")
    public = save_public(tiny_generator("resnet_6blocks", "instance", seed=7), root / "latest_net_G_A.pth")
    export_model(public, root / "model", ExportConfig())
    sketches = write_sketches(root / "sketches", {"astronaut.png": ("astronaut", 48, 40)})
    write_sketches(root / "next", {"after-notes.png": ("coffee", 40, 40), "after-huge.png": ("chelsea", 40, 40)})
    (root / "notes.png").write_text("this is a text file, not a PNG\n")
    huge_png(root / "huge.png", 20000, 20000)
    return {"root": root, "model": root / "model", "sketches": sketches}


@pytest.fixture(scope="module")
def server(files: dict[str, Path]) -> Iterator[str]:
    """`advseg serve MODEL` as a user starts it, on 127.0.0.1 and a free port."""
    port = free_port()
    log = open(files["root"] / "serve.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "advseg_cli.cli", "serve", str(files["model"]), "--port",
                                str(port), "--device", "cpu", "--size", str(SIZE)], cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, "ADVSEG_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(lambda: answers(url) or process.poll() is not None, 120, "the server to answer")
        assert process.poll() is None, (files["root"] / "serve.log").read_text()
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.get(server)
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#colorize-drawing"), 60, "the page")
    yield driver
    driver.quit()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def image_src(driver: Any, elem_id: str) -> str | None:
    images = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
    return images[0].get_attribute("src") if images else None


def fetch_image(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())))


def upload_and_click(driver: Any, tab: str, file_id: str, button_id: str, path: Path) -> None:
    """Open a tab, clear its file box, choose ``path`` in it and press its button."""
    driver.find_element(By.CSS_SELECTOR, f"#tab-{tab}-button").click()
    for clear in driver.find_elements(By.CSS_SELECTOR, f"#{file_id} button[aria-label='Clear']"):
        clear.click()
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f"#{file_id} input[type=file]"), 10, "the file input")
    driver.find_element(By.CSS_SELECTOR, f"#{file_id} input[type=file]").send_keys(str(path))
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f"#{file_id} td.filename[aria-label='{path.name}']"), 30,
             "the upload")
    driver.find_element(By.CSS_SELECTOR, f"#{button_id}").click()


def new_result(driver: Any, before: str | None) -> str:
    return wait_for(lambda: (src := image_src(driver, "result")) and src != before and src, 60, "a new result")


def colorize_reference(files: dict[str, Path], sketches: Path, out: Path) -> Path:
    colorize_folder(files["model"], sketches, out, ColorizeConfig(size=SIZE, **CPU))
    return out


def assert_within_one_level(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert np.abs(actual.astype(np.int16) - expected.astype(np.int16)).max() <= 1


def test_an_uploaded_sketch_comes_back_as_colorize_makes_it(browser: Any, files: dict[str, Path],
                                                            tmp_path: Path) -> None:
    upload_and_click(browser, "sketch", "sketch-file", "colorize-sketch", files["sketches"] / "astronaut.png")
    result = fetch_image(new_result(browser, None))
    expected = result_of(colorize_reference(files, files["sketches"], tmp_path / "ref"), "astronaut.png")
    assert expected.shape == (SIZE, SIZE, 3) and expected.std() > 5
    assert_within_one_level(result, expected)
    if SCREENSHOT:
        browser.save_screenshot(SCREENSHOT)


def test_strokes_drawn_on_the_canvas_become_a_colour_image(browser: Any, files: dict[str, Path],
                                                           tmp_path: Path) -> None:
    browser.find_element(By.CSS_SELECTOR, "#tab-draw-button").click()
    browser.find_element(By.CSS_SELECTOR, "#canvas button[aria-label='Brush']").click()
    canvas = wait_for(lambda: [c for c in browser.find_elements(By.CSS_SELECTOR, "#canvas canvas") if c.is_displayed()],
                      10, "the canvas")[-1]
    strokes = ActionChains(browser).move_to_element_with_offset(canvas, -60, -60).click_and_hold()
    for dx, dy in ((40, 10), (40, 30), (0, 40), (-60, 20)):
        strokes = strokes.move_by_offset(dx, dy)
    strokes.release().move_to_element_with_offset(canvas, 50, -40).click_and_hold().move_by_offset(0, 90).release()
    strokes.perform()
    before = image_src(browser, "result")
    browser.find_element(By.CSS_SELECTOR, "#colorize-drawing").click()
    result = fetch_image(new_result(browser, before))
    seen = fetch_image(image_src(browser, "network-sketch"))  # the gray sketch the network got
    assert seen.shape == (SIZE, SIZE) and (seen < 128).sum() > 20 and (seen > 250).mean() > 0.5  # lines on white
    assert result.shape == (SIZE, SIZE, 3)
    # and it is colorize's output for that drawing
    drawing = tmp_path / "drawing"
    drawing.mkdir()
    Image.fromarray(seen).save(drawing / "drawing.png")
    assert_within_one_level(result, result_of(colorize_reference(files, drawing, tmp_path / "ref"), "drawing.png"))


@pytest.mark.parametrize("name,message", [("notes.png", "not an image"), ("huge.png", "too large")])
def test_a_bad_upload_gets_a_message_and_the_server_keeps_serving(browser: Any, files: dict[str, Path], server: str,
                                                                 name: str, message: str) -> None:
    before = image_src(browser, "result")
    upload_and_click(browser, "sketch", "sketch-file", "colorize-sketch", files["root"] / name)
    wait_for(lambda: message in browser.find_element(By.TAG_NAME, "body").text, 30, f"the message {message!r}")
    assert image_src(browser, "result") == before
    following = files["root"] / "next" / f"after-{Path(name).stem}.png"  # another sketch: another result
    upload_and_click(browser, "sketch", "sketch-file", "colorize-sketch", following)
    assert fetch_image(new_result(browser, before)).shape == (SIZE, SIZE, 3)
    assert answers(server)
    assert "Traceback" not in (files["root"] / "serve.log").read_text()  # a message for the user, not a crash


def test_the_http_api_answers_a_script(server: str, files: dict[str, Path], tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    client = Client(server, download_files=str(tmp_path / "downloads"), verbose=False, analytics_enabled=False)
    seen, result = client.predict(handle_file(str(files["sketches"] / "astronaut.png")), api_name="/colorize_sketch")
    expected = result_of(colorize_reference(files, files["sketches"], tmp_path / "ref"), "astronaut.png")
    assert_within_one_level(np.asarray(Image.open(result)), expected)


def outward_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.skipif(outward_address() is None, reason="this machine has no non-loopback address to try")
def test_the_page_listens_on_127_0_0_1_only_by_default(server: str) -> None:
    port = int(server.rstrip("/").rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection((outward_address(), port), timeout=3).close()
    assert answers(server)
