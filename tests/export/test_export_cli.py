"""advseg export from a real trained run, as a user does it: colorize on the exports equals colorize on the
run; tampered or broken exports and wrong OUTs are refused with one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from advseg_cli.training.loop import train
from tests.colorize.kit import CPU_OPTIONS, result_of, write_sketches
from tests.helpers import invoke_advseg
from tests.training.test_training import make_dataset, tiny_config

NAMES = ("astronaut.png", "sub/chelsea.jpg", "coffee.png")


@pytest.fixture(scope="module")
def run_and_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real Pix2Pix run (batch norm, dropout: eval mode matters), its two exports and colorize RUN's output."""
    root = tmp_path_factory.mktemp("export-cli")
    summary = train(tiny_config(make_dataset(root / "data"), root / "runs", model="pix2pix", max_steps=2,
                                max_items=1, lr=0.01, model_options={"init_type": "kaiming"}))
    sketches = write_sketches(root / "sketches", {"astronaut.png": ("astronaut", 40, 40),
                                                  "sub/chelsea.jpg": ("chelsea", 48, 32),
                                                  "coffee.png": ("coffee", 32, 32)})
    paths = {"run": summary.run_dir, "sketches": sketches, "folder": root / "exported", "onnx": root / "g.onnx",
             "root": root}
    for args in ((summary.run_dir, paths["folder"]), (summary.run_dir, paths["onnx"], "--format", "onnx")):
        result = invoke_advseg("export", *map(str, args))
        assert result.returncode == 0, result.stderr
    result = invoke_advseg("colorize", str(summary.run_dir), str(sketches), str(root / "from-run"), *CPU_OPTIONS)
    assert result.returncode == 0, result.stderr
    return paths


def assert_within_one_level(actual: np.ndarray, expected: np.ndarray, label: str) -> None:
    """ONNX Runtime sums in another order than torch: a value on a .5 boundary may round the other way."""
    assert actual.shape == expected.shape, label
    difference = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1, f"{label}: {difference.max()} levels"
    assert (difference > 0).mean() < 0.01, f"{label}: {(difference > 0).sum()} values differ"


@pytest.mark.parametrize("model", ["folder", "onnx"])
def test_colorize_on_an_export_equals_colorize_on_the_run(run_and_exports: dict[str, Path], model: str) -> None:
    out = run_and_exports["root"] / f"from-{model}"
    result = invoke_advseg("colorize", str(run_and_exports[model]), str(run_and_exports["sketches"]), str(out),
                           *CPU_OPTIONS)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "advseg-run.json").read_text())
    assert record["options"]["checkpoint_kind"] == {"folder": "exported-folder", "onnx": "onnx-file"}[model]
    for name in NAMES:
        expected = result_of(run_and_exports["root"] / "from-run", name)
        assert expected.shape == (32, 32, 3) and expected.std() > 5  # the trained crop size, not a flat image
        assert_within_one_level(result_of(out, name), expected, f"{model} {name}")
    if model == "folder":  # the same torch network rebuilt: not one value differs
        assert all(np.array_equal(result_of(out, n), result_of(run_and_exports["root"] / "from-run", n))
                   for n in NAMES)


def test_the_model_card_and_config_come_from_the_run(run_and_exports: dict[str, Path]) -> None:
    config = json.loads((run_and_exports["folder"] / "config.json").read_text())
    assert config["source"]["run"] == str(run_and_exports["run"].resolve())
    assert config["source"]["step"] == 2 and config["source"]["model"] == "pix2pix"
    assert config["trained_crop_size"] == 32 and config["trained_load_size"] == 36
    card = (run_and_exports["folder"] / "README.md").read_text()
    assert "model: pix2pix" in card and "steps: 2" in card and config["source"]["sha256"] in card
    assert "advseg mode: none" in card and "FID: not measured" in card


def test_the_model_card_quotes_the_runs_fid(run_and_exports: dict[str, Path], tmp_path: Path) -> None:
    fid_file = run_and_exports["run"] / "fid.json"  # as `advseg fid REAL FAKE --json > RUN/fid.json` leaves it
    fid_file.write_text(json.dumps({"fid": 123.456, "fake": {"images": 3}}))
    try:
        assert invoke_advseg("export", str(run_and_exports["run"]), str(tmp_path / "again")).returncode == 0
    finally:
        fid_file.unlink()
    assert "- FID: 123.46 (3 generated images" in (tmp_path / "again" / "README.md").read_text()


def one_line_refusal(*args: object, fragments: tuple[str, ...], stage: str = "colorize") -> None:
    result = invoke_advseg(stage, *map(str, args))
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"advseg {stage}: error:"), lines
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def tampered_folder(source: Path, target: Path, change: str) -> Path:
    shutil.copytree(source, target)
    weights, config_file = target / "model.safetensors", target / "config.json"
    config = json.loads(config_file.read_text())
    if change == "weights":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0x40  # one bit of the last tensor's values
        weights.write_bytes(bytes(data))
    elif change == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif change in ("arch", "norm"):
        config["generator"][change] = {"arch": "resnet_9blocks", "norm": "instance"}[change]
        config_file.write_text(json.dumps(config))
    elif change == "config-not-json":
        config_file.write_text(config_file.read_text()[:40])
    return target


@pytest.mark.parametrize("change,fragments", [
    ("weights", ("sha256", "changed or truncated", "advseg export")),
    ("truncated", ("sha256", "changed or truncated")),
    ("arch", ("--arch resnet_9blocks", "written for", "resnet_6blocks")),
    ("norm", ("--norm instance", "written for")),
    ("config-not-json", ("unreadable JSON",)),
])
def test_a_tampered_export_folder_is_refused(run_and_exports: dict[str, Path], tmp_path: Path, change: str,
                                             fragments: tuple[str, ...]) -> None:
    folder = tampered_folder(run_and_exports["folder"], tmp_path / "export", change)
    one_line_refusal(folder, run_and_exports["sketches"], tmp_path / "out", *CPU_OPTIONS, fragments=fragments)
    assert not (tmp_path / "out").exists()


def tampered_onnx(source: Path, target: Path, change: str) -> Path:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    if change == "weights":
        initializer = max(model.graph.initializer, key=lambda tensor: np.prod(tensor.dims))
        values = numpy_helper.to_array(initializer).copy()
        values.flat[0] += 0.5
        initializer.CopyFrom(numpy_helper.from_array(values, initializer.name))
    elif change == "arch":
        entry = next(entry for entry in model.metadata_props if entry.key == "advseg.config")
        config = json.loads(entry.value)
        config["generator"]["arch"] = "resnet_9blocks"
        entry.value = json.dumps(config)
    if change == "truncated":
        target.write_bytes(source.read_bytes()[: len(source.read_bytes()) // 2])
    else:
        onnx.save(model, str(target))
    return target


@pytest.mark.parametrize("change,fragments", [
    ("weights", ("sha256 mismatch", "advseg export")),
    ("arch", ("sha256 mismatch",)),
    ("truncated", ("not a readable ONNX file",)),
])
def test_a_tampered_onnx_file_is_refused(run_and_exports: dict[str, Path], tmp_path: Path, change: str,
                                         fragments: tuple[str, ...]) -> None:
    path = tampered_onnx(run_and_exports["onnx"], tmp_path / "g.onnx", change)
    one_line_refusal(path, run_and_exports["sketches"], tmp_path / "out", *CPU_OPTIONS, fragments=fragments)
    assert not (tmp_path / "out").exists()


def test_onnx_refuses_settings_it_cannot_honour(run_and_exports: dict[str, Path], tmp_path: Path) -> None:
    one_line_refusal(run_and_exports["onnx"], run_and_exports["sketches"], tmp_path / "out", "--test-mode", "public",
                     *CPU_OPTIONS, fragments=("--test-mode public", "eval mode"))
    one_line_refusal(run_and_exports["folder"], run_and_exports["sketches"], tmp_path / "out", "--arch", "unet_256",
                     *CPU_OPTIONS, fragments=("--arch", "carries its own architecture"))
    assert not (tmp_path / "out").exists()


def test_export_refuses_bad_outs_before_writing(run_and_exports: dict[str, Path], tmp_path: Path) -> None:
    run = run_and_exports["run"]
    one_line_refusal(run, tmp_path / "model", "--format", "onnx", fragments=("*.onnx",), stage="export")
    one_line_refusal(run, tmp_path / "m.onnx", fragments=("--format onnx",), stage="export")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    one_line_refusal(run, tmp_path / "busy", fragments=("not empty", "--overwrite"), stage="export")
    one_line_refusal(run_and_exports["onnx"], tmp_path / "again", fragments=("already an ONNX file",), stage="export")
    one_line_refusal(tmp_path / "missing", tmp_path / "x", fragments=("no such run folder",), stage="export")
    one_line_refusal(run, tmp_path / "x", "--epoch", "9", fragments=("epoch_009.pt",), stage="export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def test_onnx_on_cuda_without_the_provider_is_refused_before_any_output(run_and_exports: dict[str, Path],
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    from advseg_cli import devices

    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: True)  # a GPU, but a CPU-only onnxruntime
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    one_line_refusal(run_and_exports["onnx"], run_and_exports["sketches"], tmp_path / "out", "--device", "cuda",
                     "--workers", "0", "--quiet", fragments=("no CUDA provider", "onnxruntime-gpu"))
    assert not (tmp_path / "out").exists()


def test_the_commands_defaults_are_the_stage_defaults() -> None:
    """The commands spell out choices and defaults (no torch import for --help); they must not drift."""
    import dataclasses

    import click

    from advseg_cli import export as export_stage
    from advseg_cli import serve as serve_stage
    from advseg_cli.commands.export import EXPORT_FORMATS, export
    from advseg_cli.commands.serve import serve

    assert EXPORT_FORMATS == export_stage.EXPORT_FORMATS
    for command, config_type in ((export, export_stage.ExportConfig), (serve, serve_stage.ServeConfig)):
        fields = {field.name: field.default for field in dataclasses.fields(config_type)}
        options = [p for p in command.params if isinstance(p, click.Option) and p.name in fields]
        assert len(options) >= 5, command.name
        for option in options:
            default = option.to_info_dict()["default"]
            default = None if default is None or type(default).__name__ == "Sentinel" else default  # click's UNSET
            assert default == fields[option.name], (command.name, option.name, default)
