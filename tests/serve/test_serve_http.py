"""`advseg serve` facing strangers, through its HTTP API (gradio_client, as any script on the network would):
every file of tests/untrusted_images.py is refused with its reason or coloured as `advseg colorize` colours
it, the next request is answered normally after each refusal, and the server writes nothing outside its
private temporary folder, which is gone when it stops.

One real `advseg serve` process for the whole module (its start-up, gradio's, is most of the time), run with
its own empty working folder, HOME and TMPDIR so that anything it writes anywhere is seen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advseg_cli.images import decode_rgb
from advseg_cli.optional import install_hint
from tests.colorize.kit import save_public, tiny_generator
from tests.helpers import REPO
from tests.serve.kit import answers, free_port, huge_png
from tests.untrusted_images import ACCEPTED, LIMITS, REFUSED, sketch_array

pytest.importorskip("gradio", reason=f"advseg serve needs {install_hint('gradio')}")
gradio_client = pytest.importorskip("gradio_client", reason=f"the HTTP API test needs {install_hint('gradio')}")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

SIZE = 32  # the served network side: small, so each request is quick


@dataclass
class Server:
    """The running `advseg serve`, the folders it may write in and a connected client."""

    process: subprocess.Popen
    url: str
    root: Path
    model: Path
    client: Client
    log: Path

    @property
    def watched(self) -> dict[str, Path]:
        """Folders the server must leave as they were (TMPDIR may only hold its advseg-serve-* folder)."""
        return {name: self.root / name for name in ("cwd", "home", "tmp")}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve-http")
    model = save_public(tiny_generator("resnet_6blocks", "instance", seed=5), root / "model" / "latest_net_G.pth")
    for name in ("cwd", "home", "tmp", "uploads"):
        (root / name).mkdir()
    port, log = free_port(), root / "serve.log"
    env = {**os.environ, "ADVSEG_OFFLINE": "1", "HOME": str(root / "home"), "TMPDIR": str(root / "tmp"),
           "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("XDG_CACHE_HOME", None)
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "advseg_cli.cli", "serve", str(model), "--port", str(port),
                                    "--device", "cpu", "--size", str(SIZE), "--max-side", str(LIMITS.max_side),
                                    "--max-pixels", str(LIMITS.max_pixels)],
                                   cwd=root / "cwd", stdout=output, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while not answers(url):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server did not answer in 180 s"
            time.sleep(0.3)
        client = Client(url, download_files=str(root / "downloads"), verbose=False, analytics_enabled=False)
        yield Server(process, url, root, model, client, log)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(60)


def upload(server: Server, name: str, data: bytes) -> Path:
    path = server.root / "uploads" / name
    path.write_bytes(data)
    return path


def colorize_over_http(server: Server, path: Path, endpoint: str = "/colorize_sketch") -> np.ndarray:
    _, result = server.client.predict(handle_file(str(path)), api_name=endpoint)
    return np.asarray(Image.open(result))


@pytest.fixture(scope="module")
def reference(server: Server) -> np.ndarray:
    """The result of one good sketch, by the API: after a refusal the server must give it again, exactly."""
    good = upload(server, "good.png", _png(sketch_array()))
    result = colorize_over_http(server, good)
    assert result.shape == (SIZE, SIZE, 3) and result.std() > 1
    return result


def _png(gray: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, "PNG")
    return buffer.getvalue()


def assert_refused(server: Server, path: Path, fragment: str, endpoint: str = "/colorize_sketch") -> None:
    with pytest.raises(AppError) as refusal:
        server.client.predict(handle_file(str(path)), api_name=endpoint)
    assert fragment in str(refusal.value), str(refusal.value)
    assert "Traceback" not in str(refusal.value)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_strangers_bad_file_is_refused_with_its_reason_and_the_next_request_is_served(
        server: Server, reference: np.ndarray, name: str) -> None:
    make, fragment = REFUSED[name]
    assert_refused(server, upload(server, name, make()), fragment)
    assert np.array_equal(colorize_over_http(server, server.root / "uploads" / "good.png"), reference)


def test_a_decompression_bomb_is_refused_at_once_and_photos_are_checked_too(server: Server,
                                                                            reference: np.ndarray) -> None:
    huge_png(server.root / "uploads" / "bomb.png", 20000, 20000)  # 400 M pixels in 0.1 MB
    started = time.monotonic()
    assert_refused(server, server.root / "uploads" / "bomb.png", "too large")
    assert time.monotonic() - started < 20, "the bomb took long: were its pixels decoded?"
    for name in ("too-wide.png", "animated-gif.gif", "short-data.png", "postscript.png"):  # before HED is needed
        make, fragment = REFUSED[name]
        assert_refused(server, upload(server, name, make()), fragment, endpoint="/colorize_photo")
    assert np.array_equal(colorize_over_http(server, server.root / "uploads" / "good.png"), reference)


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_every_still_image_of_an_allowed_format_is_coloured_as_colorize_does(server: Server, name: str) -> None:
    from advseg_cli.serve import ServeConfig, load_colorizer

    make, shape = ACCEPTED[name]
    data = make()
    _, expected = load_colorizer(server.model, ServeConfig(size=SIZE, device="cpu")).colorize(decode_rgb(data))
    assert decode_rgb(data).shape[:2] == shape
    result = colorize_over_http(server, upload(server, name, data))
    assert result.shape == expected.shape == (SIZE, SIZE, 3)
    assert np.abs(result.astype(np.int16) - expected).max() <= 1


def test_zz_nothing_is_written_outside_the_private_folder_and_it_is_gone_after_sigterm(
        server: Server, reference: np.ndarray) -> None:
    """Last in the module: it stops the server. (``reference`` makes sure an upload was served.)"""
    watched = server.watched
    assert list(watched["cwd"].iterdir()) == [], "the server wrote into its working folder"
    assert list(watched["home"].rglob("*")) == [], "the server wrote into HOME"
    private = [path.name for path in watched["tmp"].iterdir()]
    assert len(private) == 1 and private[0].startswith("advseg-serve-"), private
    assert any(watched["tmp"].rglob("*.png")), "the uploads were not kept in the private folder"
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(60) == 0, server.log.read_text()[-2000:]  # SIGTERM stops it as Ctrl-C does
    assert list(watched["tmp"].iterdir()) == [], "the private folder outlived the server"
    assert "Traceback" not in server.log.read_text()
