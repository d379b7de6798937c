"""Where weights are looked for, and what a user is told: each checked against an independent computation.

Written for the survivors of mutation testing in advseg_cli/weights.py (docs/testing.md): the default cache
folder, the values that switch ADVSEG_OFFLINE off, the file an installed package ships, torch hub's folder,
the messages' hash prefixes and the downloader's arguments.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

import pytest

from advseg_cli import weights
from advseg_cli.download import DownloadFailedError
from advseg_cli.edges import HED_WEIGHTS
from advseg_cli.errors import WeightsMismatchError, WeightsNotFoundError
from advseg_cli.weights import WeightsSpec

PREFIXED = WeightsSpec(name="test-prefixed", filename="net-0123abcd.pth", option="--net-weights",
                       how_to_get="download it from the authors", url="http://127.0.0.1:9/net-0123abcd.pth",
                       sha256_prefix="0123abcd", torch_hub=True)
FULL = WeightsSpec(name="test-full", filename="full.bin", option="--full-weights", how_to_get="ask the authors",
                   sha256="ab" * 32)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(weights._REGISTRY, PREFIXED.name, PREFIXED)
    monkeypatch.setitem(weights._REGISTRY, FULL.name, FULL)


def test_the_cache_folder_defaults_to_dot_cache_advseg_in_the_home_folder(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADVSEG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights.advseg_home() == tmp_path / ".cache" / "advseg"
    monkeypatch.setenv("ADVSEG_HOME", "~/elsewhere")
    assert weights.advseg_home() == tmp_path / "elsewhere"


@pytest.mark.parametrize(("value", "is_offline"), [(None, False), ("", False), ("0", False), ("false", False),
                                                   ("no", False), ("1", True), ("yes", True), ("true", True)])
def test_advseg_offline_values(monkeypatch: pytest.MonkeyPatch, value: str | None, is_offline: bool) -> None:
    if value is None:
        monkeypatch.delenv("ADVSEG_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("ADVSEG_OFFLINE", value)
    assert weights.offline() is is_offline


def test_the_file_an_installed_package_ships_is_found_where_its_metadata_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVSEG_HOME", str(tmp_path / "empty-home"))
    distribution, inner = HED_WEIGHTS.package
    shipped = Path(str(importlib.metadata.distribution(distribution).locate_file(inner)))
    resolved = weights.resolve_weights(HED_WEIGHTS.name)
    assert (resolved.source, resolved.path, resolved.name) == ("package", shipped.resolve(), HED_WEIGHTS.name)
    missing_inner = WeightsSpec(name="x", filename="x", option="--x", how_to_get="x", package=(distribution, "no/such"))
    assert weights._packaged_file(missing_inner) is None
    not_installed = WeightsSpec(name="y", filename="y", option="--y", how_to_get="y",
                                package=("no-such-distribution-advseg", inner))
    assert weights._packaged_file(not_installed) is None


def test_torch_hub_checkpoints_is_torch_home_hub_checkpoints_and_is_searched_last(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registered: None) -> None:
    import torch.hub

    monkeypatch.setenv("ADVSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert weights.torch_hub_checkpoints() == tmp_path / "torch" / "hub" / "checkpoints"
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / PREFIXED.filename
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"hub copy")
    with pytest.raises(WeightsMismatchError):  # found there (and refused: its hash is not the published prefix)
        weights.resolve_weights(PREFIXED.name)
    assert weights._places_to_look(PREFIXED) == [(hub_file, "torch-hub")]
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / PREFIXED.filename).write_bytes(b"cache copy")
    assert [source for _, source in weights._places_to_look(PREFIXED)] == ["cache", "torch-hub"]


def test_an_unknown_name_lists_every_known_one(registered: None) -> None:
    with pytest.raises(WeightsNotFoundError) as error:
        weights.weights_spec("no-such-weights")
    assert str(error.value) == f"unknown weights 'no-such-weights'; known: {', '.join(sorted(weights._REGISTRY))}"


def test_a_found_file_with_another_hash_names_both_hashes_by_their_first_12_digits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registered: None) -> None:
    monkeypatch.setenv("ADVSEG_HOME", str(tmp_path))
    (tmp_path / FULL.filename).write_bytes(b"not the official file")
    digest = hashlib.sha256(b"not the official file").hexdigest()
    with pytest.raises(WeightsMismatchError) as error:
        weights.resolve_weights(FULL.name)
    assert str(error.value) == (f"{tmp_path / FULL.filename}: sha256 {digest[:12]}... is not the official "
                                f"{FULL.filename} ({FULL.sha256[:12]}...); ask the authors, or pass a file you "
                                "trust with --full-weights PATH")
    problem = weights._prefix_problem(tmp_path / FULL.filename, "0123abcd")
    assert problem == f"sha256 {digest[:12]}..., expected 0123abcd..."
    assert weights._prefix_problem(tmp_path / FULL.filename, digest[:8]) is None


def test_the_downloader_gets_the_file_name_and_the_way_around_an_unreachable_host(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registered: None) -> None:
    import advseg_cli.download

    monkeypatch.setenv("ADVSEG_HOME", str(tmp_path))
    calls: list[dict[str, Any]] = []

    def failing_download(url: str, target: Path, expected: Any, **options: Any) -> None:
        calls.append({"url": url, "target": target, **options})
        raise DownloadFailedError("HTTP 404")

    monkeypatch.setattr(advseg_cli.download, "download", failing_download)
    with pytest.raises(WeightsNotFoundError) as error:
        weights._download(PREFIXED, tmp_path / PREFIXED.filename)
    assert calls == [{"url": PREFIXED.url, "target": tmp_path / PREFIXED.filename, "label": PREFIXED.filename,
                      "unreachable_hint": f"download it from the authors, put it in {tmp_path} or pass "
                                          "--net-weights PATH"}]
    assert str(error.value) == (f"cannot download {PREFIXED.filename} (HTTP 404); download it from the authors, "
                                f"put it in {tmp_path} or pass --net-weights PATH")


def test_an_empty_registry_says_none_are_known(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "_REGISTRY", {})
    with pytest.raises(WeightsNotFoundError, match=r"^unknown weights 'x'; known: none$"):
        weights.weights_spec("x")


def test_a_missing_file_says_where_to_put_it_torch_hub_too_where_that_is_searched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registered: None) -> None:
    import torch.hub

    monkeypatch.setenv("ADVSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADVSEG_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError) as hub_searched:
        weights.resolve_weights(PREFIXED.name)
    assert str(hub_searched.value) == (f"{PREFIXED.filename} not found: download it from the authors, then put it in "
                                       f"{tmp_path / 'home'} or {tmp_path / 'torch' / 'hub' / 'checkpoints'} or pass "
                                       "--net-weights PATH")
    with pytest.raises(WeightsNotFoundError) as cache_only:
        weights.resolve_weights(FULL.name)
    assert str(cache_only.value) == (f"{FULL.filename} not found: ask the authors, then put it in {tmp_path / 'home'} "
                                     "or pass --full-weights PATH")


def test_a_tensor_file_is_read_without_code_and_anything_else_is_one_line(tmp_path: Path) -> None:
    import pickle

    import torch

    good = tmp_path / "good.pth"
    torch.save({1: torch.ones(2), "b": torch.zeros(1)}, good)
    content = weights.read_tensor_file(good, "a state dict")
    assert list(content) == ["1", "b"] and torch.equal(content["1"], torch.ones(2))
    for name, payload, reason in [("list.pth", [torch.ones(1)], "found list"), ("empty.pth", {}, "found dict")]:
        torch.save(payload, tmp_path / name)
        with pytest.raises(WeightsMismatchError) as error:
            weights.read_tensor_file(tmp_path / name, "a state dict")
        assert str(error.value) == f"{tmp_path / name}: expected a state dict (name -> tensor), {reason}"

    class Runs:
        def __reduce__(self) -> tuple:
            return (print, ("code ran",))

    torch.save({"w": Runs()}, tmp_path / "code.pth")  # a real torch file whose unpickling would run code
    (tmp_path / "empty-file.pth").write_bytes(b"")
    for name in ("code.pth", "empty-file.pth"):
        with pytest.raises(WeightsMismatchError) as error:
            weights.read_tensor_file(tmp_path / name, "a state dict")
        assert str(error.value) == f"{tmp_path / name}: not a PyTorch state dict that can be read safely " \
                                   f"(weights_only=True): {first_line_of_torchs_refusal(tmp_path / name)}"


def first_line_of_torchs_refusal(path: Path) -> str:
    """The reference: what torch.load(weights_only=True) itself says about the file, first line."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        text = str(error).strip()
        return text.splitlines()[0] if text else type(error).__name__
    raise AssertionError(f"torch read {path}")


def test_a_resolved_file_is_recorded_by_name_path_hash_and_source(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    resolved = weights.resolve_weights(HED_WEIGHTS.name, path)
    assert resolved.as_record() == {"name": HED_WEIGHTS.name, "path": str(path.resolve()),
                                    "sha256": hashlib.sha256(b"weights").hexdigest(), "source": "explicit"}
