"""``advseg serve``: a local web page (Gradio) where a sketch becomes a colour photo.

Three ways in, one way out: draw on a canvas with a black brush, upload a sketch, or upload a photo
whose HED sketch is made first (``advseg edges``' defaults); the result appears beside the sketch the
network saw, with a download button. Each input has a named endpoint of Gradio's HTTP API
(``/colorize_drawing``, ``/colorize_sketch``, ``/colorize_photo``), usable from a script with
``gradio_client``.

The result is computed exactly as ``advseg colorize`` computes it (same resolver, preparation,
forward pass and rounding), so the page and the command give the same pixels.

Uploads are untrusted: they are read by our own decoder after the header is checked (an image over
the side or pixel limit, an animation, a format other than the usual still ones, a PNG whose data is
not its declared size is refused before its pixels are decoded); anything wrong becomes a message in
the page and the server goes on serving. Gradio keeps uploads and results in a private temporary
folder that is deleted when the server stops; nothing is written elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advseg_cli.colorize import (ColorizeConfig, Geometry, LoadedGenerator, generate, load_generator,
                                 prepare_sketch, quantise, resize_back, resolve_geometry)
from advseg_cli.devices import resolve_device
from advseg_cli.errors import AdvsegError, ImageDecodeError
from advseg_cli.images import ImageLimits, decode_rgb
from advseg_cli.optional import require

SERVE_PURPOSE = "the web page"  # what needs gradio, in its refusal
DEFAULT_PORT = 7860
DEFAULT_MAX_SIDE = 4096  # uploads with a longer side are refused (from the header, before decoding)
DEFAULT_MAX_PIXELS = 4096 * 4096  # uploads with more pixels are refused (likewise)
MAX_UPLOAD_MB = 50  # Gradio refuses larger uploads before they reach us
CANVAS_SIDE = 512
SHOWN_SIDE = 280  # px the two result images take in the page
# Networks work at small sides (64-256 px): show the images enlarged, pixels kept sharp.
PAGE_CSS = ("#network-sketch img, #result img {width: 100%; height: 230px; object-fit: contain; "
            "image-rendering: pixelated;}")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Every option of ``advseg serve``."""

    host: str = "127.0.0.1"  # the page binds this address; 0.0.0.0 exposes it to the network
    port: int = DEFAULT_PORT
    size: int | None = None  # network side; None: the trained crop size; 0: each sketch's own size
    epoch: int | None = None  # run folders: checkpoints/epoch_NNN.pt
    device: str = "auto"
    max_side: int = DEFAULT_MAX_SIDE  # longest side an upload may have
    max_pixels: int = DEFAULT_MAX_PIXELS  # most pixels (width x height) an upload may have
    hed_weights: Path | None = None  # HED weights for photo uploads (default: resolved like `advseg edges`)

    def validate(self) -> ServeConfig:
        if not 0 <= self.port <= 65535:
            raise AdvsegError(f"--port {self.port}: use 0..65535")
        if self.max_side < 1:
            raise AdvsegError(f"--max-side {self.max_side}: must be >= 1")
        if self.max_pixels < 1:
            raise AdvsegError(f"--max-pixels {self.max_pixels}: must be >= 1")
        return self

    @property
    def limits(self) -> ImageLimits:
        """What an upload may be, as the image reader checks it."""
        return ImageLimits(max_side=self.max_side, max_pixels=self.max_pixels)


class UploadError(Exception):
    """An upload the page cannot use; its message is shown to the user as it is."""


# ----------------------------------------------------------------------------- reading uploads
def read_upload(path: str | None, limits: ImageLimits) -> np.ndarray:
    """An uploaded file as an upright HxWx3 uint8 array, or UploadError with what is wrong.

    Anyone who reaches the port can send anything: images' refusals (size, frames, format, forged or cut
    data) come from ``images.decode_rgb``'s untrusted checks, before any pixel is decoded.
    """
    if not path:
        raise UploadError("no file: choose an image to upload first")
    data = Path(path).read_bytes()
    try:
        return decode_rgb(data, Path(path).name, limits)
    except ImageDecodeError as error:
        raise UploadError(error.reason) from None


def drawing_to_rgb(value: dict[str, Any] | None) -> np.ndarray:
    """The Sketchpad's composite (RGB, white where nothing was drawn) as HxWx3 uint8."""
    composite = value.get("composite") if isinstance(value, dict) else None
    if composite is None:
        raise UploadError("the canvas is empty: draw a sketch first")
    array = np.asarray(composite)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] == 4:  # composite the strokes on white paper, as images.decode_rgb does
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        array = np.round(array[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(array[:, :, :3].astype(np.uint8))


# ----------------------------------------------------------------------------- the colorizer
class Colorizer:
    """One generator and the geometry ``advseg colorize`` would use, shared by the page's handlers."""

    def __init__(self, generator: LoadedGenerator, geometry: Geometry, device: torch.device) -> None:
        self.generator = generator
        self.geometry = geometry
        self.device = device
        self.network = generator.network.to(device).eval().requires_grad_(False)
        self._lock = threading.Lock()  # one forward at a time: the CPU is saturated by one already

    def colorize(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the gray sketch the network saw, the colour result): colorize's preparation and rounding."""
        prepared = prepare_sketch(rgb, Path("upload"), self.geometry)
        with self._lock:
            output = generate(self.network, [prepared.network_input], self.device, "fp32")
        result = quantise(output, "deterministic")[0]
        if self.geometry.size == 0:  # as colorize --size 0 writes it: back at the sketch's own size
            result = resize_back(result, prepared.input_hw)
        result = result[:, :, 0] if result.ndim == 3 and result.shape[2] == 1 else result
        return prepared.network_input, np.ascontiguousarray(result)


class PhotoSketcher:
    """HED sketches of uploaded photos, as ``advseg edges`` makes them; HED is loaded on first use."""

    def __init__(self, weights: Path | None, device: torch.device) -> None:
        self.weights = weights
        self.device = device
        self._model: Any = None
        self._lock = threading.Lock()

    def sketch(self, rgb: np.ndarray) -> np.ndarray:
        """The gray sketch of a photo with `advseg edges`' defaults (HED, pad 128, pix2pix post-processing,
        256 x 256), so a served model sees the kind of sketch it was trained on."""
        from advseg_cli.edges import (HED_WEIGHTS, EdgesConfig, hed_probability_to_sketch, load_hed,
                                      prepare_hed_input, run_hed)
        from advseg_cli.weights import resolve_weights

        config = EdgesConfig()
        with self._lock:
            if self._model is None:
                try:
                    self._model = load_hed(resolve_weights(HED_WEIGHTS.name, self.weights), self.device)
                except AdvsegError as error:
                    raise UploadError(f"photos need HED weights: {error}") from None
            prepared = prepare_hed_input(rgb, config.pad, config.max_side)
            (probability,) = run_hed(self._model, [prepared], self.device, "fp32", config.pad)
        return hed_probability_to_sketch(probability, rgb.shape[:2], config)


def load_colorizer(model: Path, config: ServeConfig) -> Colorizer:
    """MODEL through colorize's resolver, with the device and size colorize would choose."""
    generator = load_generator(model, epoch=config.epoch)
    colorize_config = ColorizeConfig(size=config.size, device=config.device).validate()
    if generator.runs_onnx:
        from advseg_cli.colorize import onnx_run_device

        device = onnx_run_device(colorize_config, generator)
    else:
        device = resolve_device(config.device)
    return Colorizer(generator, resolve_geometry(colorize_config, generator), device)


# ----------------------------------------------------------------------------- the page
def _handler(work: Any) -> Any:
    """Turn UploadError into Gradio's in-page message; the server itself never stops on bad input."""
    import gradio as gr

    def run(*args: Any) -> Any:
        try:
            return work(*args)
        except UploadError as error:
            raise gr.Error(str(error), print_exception=False) from None
    run.__name__ = getattr(work, "__name__", "run")
    run.__doc__ = work.__doc__
    return run


def _description(colorizer: Colorizer, model: Path) -> str:
    generator, geometry = colorizer.generator, colorizer.geometry
    size = f"{geometry.size} x {geometry.size}" if geometry.size else "each sketch's own size"
    runtime = "ONNX Runtime" if generator.runs_onnx else "PyTorch"
    return (f"# advseg: sketch to colour\n"
            f"Model `{model}` ({generator.kind}, {generator.spec.options()}, sha256 `{generator.sha256[:12]}`), "
            f"run by {runtime} on `{colorizer.device}` at {size}. Draw black lines on the white canvas, or "
            "upload a sketch (black lines on white), or upload a photo to colour its HED sketch.")


def build_page(colorizer: Colorizer, sketcher: PhotoSketcher, model: Path, limits: ImageLimits) -> Any:
    """The Gradio Blocks: three inputs on tabs, the sketch the network saw and the result beside them."""
    import gradio as gr

    def colorize_drawing(drawing: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        """Colorize what was drawn on the canvas."""
        return colorizer.colorize(drawing_to_rgb(drawing))

    def colorize_sketch(path: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Colorize an uploaded sketch (black lines on white)."""
        return colorizer.colorize(read_upload(path, limits))

    def colorize_photo(path: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Make the HED sketch of an uploaded photo, then colorize it."""
        sketch = sketcher.sketch(read_upload(path, limits))
        return colorizer.colorize(np.repeat(sketch[:, :, None], 3, axis=2))

    with gr.Blocks(title="advseg: sketch to colour", delete_cache=(300, 600)) as page:
        gr.Markdown(_description(colorizer, model))
        with gr.Row():
            with gr.Column():
                with gr.Tab("Draw", elem_id="tab-draw"):
                    canvas = gr.Sketchpad(label="Canvas", image_mode="RGB", type="numpy", elem_id="canvas",
                                          canvas_size=(CANVAS_SIDE, CANVAS_SIDE), fixed_canvas=True, layers=False,
                                          brush=gr.Brush(default_size=3, colors=["#000000"], color_mode="fixed"))
                    draw_button = gr.Button("Colorize drawing", variant="primary", elem_id="colorize-drawing")
                with gr.Tab("Upload sketch", elem_id="tab-sketch"):
                    sketch_file = gr.File(label="Sketch (black lines on white)", file_types=["image"],
                                          type="filepath", elem_id="sketch-file")
                    sketch_button = gr.Button("Colorize sketch", variant="primary", elem_id="colorize-sketch")
                with gr.Tab("Upload photo (HED sketch first)", elem_id="tab-photo"):
                    photo_file = gr.File(label="Photo", file_types=["image"], type="filepath", elem_id="photo-file")
                    photo_button = gr.Button("Sketch and colorize photo", variant="primary",
                                             elem_id="colorize-photo")
            with gr.Column():
                with gr.Row():  # small network sides are shown enlarged, the downloads keep their size
                    seen = gr.Image(label="Sketch the network saw", format="png", interactive=False,
                                    elem_id="network-sketch", buttons=["download"], height=SHOWN_SIDE)
                    result = gr.Image(label="Colorized", format="png", interactive=False, elem_id="result",
                                      buttons=["download"], height=SHOWN_SIDE)
        for button, source, work in ((draw_button, canvas, colorize_drawing),
                                     (sketch_button, sketch_file, colorize_sketch),
                                     (photo_button, photo_file, colorize_photo)):
            button.click(_handler(work), inputs=source, outputs=[seen, result], api_name=work.__name__,
                         concurrency_limit=1)
    return page


def offline_theme() -> Any:
    """Gradio's plain theme with the system's fonts: the default one fetches web fonts from the internet."""
    import gradio as gr

    return gr.themes.Base(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


@contextlib.contextmanager
def private_gradio_folder() -> Iterator[Path]:
    """Gradio caches uploads and results on disk: keep them in a private folder deleted at the end,
    with matplotlib's caches, and turn off its usage analytics (nothing leaves the machine)."""
    folder = Path(tempfile.mkdtemp(prefix="advseg-serve-"))
    before = {key: os.environ.get(key) for key in ("GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED", "MPLCONFIGDIR")}
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["MPLCONFIGDIR"] = str(folder / "matplotlib")  # its font cache would go to ~/.cache otherwise
    try:
        yield folder
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # Gradio closes its server on it, and private_gradio_folder cleans up


def serve(model: Path, config: ServeConfig = ServeConfig()) -> None:
    """Load MODEL (refusing a bad one before any server starts) and serve the page until interrupted."""
    config.validate()
    # The private folder comes first: gradio's modules read GRADIO_TEMP_DIR once, when imported (and
    # matplotlib, which gradio imports, its MPLCONFIGDIR). A refusal below removes it again.
    with private_gradio_folder():
        require("gradio", SERVE_PURPOSE)  # refused before the model is loaded
        colorizer = load_colorizer(Path(model), config)
        sketcher = PhotoSketcher(config.hed_weights, colorizer.device if not colorizer.generator.runs_onnx
                                 else torch.device("cpu"))
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _stop_on_sigterm)  # `kill` cleans up like Ctrl-C does
        page = build_page(colorizer, sketcher, Path(model), config.limits)
        try:
            page.queue(default_concurrency_limit=1).launch(
                server_name=config.host, server_port=config.port or None, share=False, ssr_mode=False,
                show_error=True, max_file_size=f"{MAX_UPLOAD_MB}mb", quiet=False, theme=offline_theme(),
                css=PAGE_CSS)
        except OSError as error:
            raise AdvsegError(f"--host {config.host} --port {config.port}: cannot listen there ({error}); "
                              "pick another --port") from None
        except KeyboardInterrupt:  # a stop before Gradio's own wait took it over: end the way that wait does
            page.close()  # a server has no unfinished work to keep or continue: stopping is its normal end
            print("advseg serve: stopped; the server is closed", file=sys.stderr, flush=True)
