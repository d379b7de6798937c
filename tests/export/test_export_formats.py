"""advseg export: ONNX Runtime equals torch, the safetensors folder rebuilds the same generator bit for bit,
for every architecture advseg builds and for the public-code layouts colorize reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file

from advseg_cli.colorize import load_generator
from advseg_cli.export import ExportConfig, export_model
from advseg_cli.exported_models import META_CONFIG, load_export_folder
from advseg_cli.models.networks import define_generator
from tests.models.test_public_checkpoints import (advsegloss_resnet_layout, cyclegan_unet_layout,
                                                  randomised_state, save)

# name -> (a module whose state-dict layout the public file has, two (H, W) sizes the architecture accepts)
SOURCES = {
    "resnet_9blocks": (lambda: define_generator("resnet_9blocks", 3, 3, 4, "instance", False), [(32, 32), (40, 24)]),
    "resnet_6blocks": (lambda: define_generator("resnet_6blocks", 3, 3, 4, "batch", True), [(32, 32), (24, 44)]),
    "unet_128": (lambda: define_generator("unet_128", 3, 3, 2, "batch", True), [(128, 128), (128, 256)]),
    "unet_256": (lambda: define_generator("unet_256", 3, 3, 2, "instance", False), [(256, 256), (512, 256)]),
    "advsegloss-resnet": (lambda: advsegloss_resnet_layout(3, 3, 4, "instance", False, 9), [(32, 32), (36, 28)]),
    "cyclegan-unet": (lambda: cyclegan_unet_layout(3, 3, 7, 2), [(128, 128), (256, 128)]),
}


@pytest.fixture(scope="module", params=sorted(SOURCES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A public-code generator file with random weights (and batch-norm statistics), exported both ways."""
    name = request.param
    make, sizes = SOURCES[name]
    root = tmp_path_factory.mktemp(f"export-{name}")
    source = save(randomised_state(make(), seed=len(name)), root / "latest_net_G.pth")
    export_model(source, root / "st", ExportConfig(format="safetensors"))
    export_model(source, root / "model.onnx", ExportConfig(format="onnx"))
    return {"name": name, "source": source, "root": root, "sizes": sizes}


def torch_output(source: Path, batch: torch.Tensor) -> np.ndarray:
    """The reference: the generator colorize builds from the public file, in eval mode."""
    network = load_generator(source).network.eval()
    with torch.no_grad():
        return network(batch).numpy()


def test_onnx_runtime_equals_torch_at_two_sizes_and_batch_2(exported: dict[str, object]) -> None:
    session = onnxruntime.InferenceSession(str(Path(exported["root"]) / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    for height, width in exported["sizes"]:
        batch = torch.rand(2, 3, height, width, generator=generator) * 2 - 1
        expected = torch_output(Path(exported["source"]), batch)
        (actual,) = session.run(None, {"sketch": batch.numpy()})
        assert actual.shape == (2, 3, height, width)
        difference = float(np.abs(actual - expected).max())
        assert difference <= 1e-4, f"{exported['name']} {height}x{width}: max |onnx - torch| {difference:.2e}"
        assert float(np.abs(expected[0] - expected[1]).max()) > 0.05  # two different images, not a constant


def test_the_safetensors_folder_rebuilds_a_bit_identical_generator(exported: dict[str, object]) -> None:
    folder = Path(exported["root"]) / "st"
    config = json.loads((folder / "config.json").read_text())
    original = load_generator(Path(exported["source"])).network.eval()
    assert config["generator"]["arch"] == original.spec.arch and config["generator"]["ngf"] == original.spec.ngf
    stored = load_file(str(folder / "model.safetensors"))
    assert stored.keys() == original.state_dict().keys()
    assert all(torch.equal(stored[key], value) for key, value in original.state_dict().items())
    rebuilt = load_export_folder(folder).network
    batch = torch.rand(2, 3, *exported["sizes"][0], generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(rebuilt(batch), original(batch))


def test_exports_hold_no_pickle_and_record_their_source(exported: dict[str, object]) -> None:
    import onnx

    root = Path(exported["root"])
    for path in (root / "st" / "model.safetensors", root / "model.onnx"):
        assert not path.read_bytes().startswith((b"PK", b"\x80"))  # neither torch's zip nor a pickle
    model = onnx.load(str(root / "model.onnx"))
    meta = json.loads({entry.key: entry.value for entry in model.metadata_props}[META_CONFIG])
    folder_config = json.loads((root / "st" / "config.json").read_text())
    assert meta["source"]["sha256"] == folder_config["source"]["sha256"] == load_generator(
        Path(exported["source"])).sha256
    assert meta["generator"] == folder_config["generator"]
