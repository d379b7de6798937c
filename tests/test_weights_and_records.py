"""Weights resolution (order, hashes, downloads, errors) and run records."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from advseg_cli.errors import WeightsMismatchError, WeightsNotFoundError
from advseg_cli.runrecord import RunRecord, conflicting_options, read_record, record_path_for
from advseg_cli.weights import WeightsSpec, advseg_home, register_weights, resolve_weights

CONTENT = b"pretend these are weights" * 100
DIGEST = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A file served from 127.0.0.1 (tests never touch the internet)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "w.bin").write_bytes(CONTENT)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/w.bin"
    server.shutdown()


def _spec(name: str, **fields: object) -> WeightsSpec:
    return register_weights(WeightsSpec(name=name, filename=f"{name}.bin", option="--weights",
                                        how_to_get="get it from the test", **fields))


def test_explicit_path_wins_over_the_cache(tmp_path: Path) -> None:
    _spec("t-explicit", sha256=DIGEST)
    (advseg_home()).mkdir(parents=True, exist_ok=True)
    (advseg_home() / "t-explicit.bin").write_bytes(CONTENT)
    mine = tmp_path / "mine.bin"
    mine.write_bytes(b"my own fine-tuned weights")
    resolved = resolve_weights("t-explicit", mine)
    assert resolved.source == "explicit" and resolved.path == mine.resolve()
    assert resolve_weights("t-explicit").source == "cache"


def test_cached_file_with_wrong_hash_is_refused() -> None:
    _spec("t-badhash", sha256=DIGEST)
    advseg_home().mkdir(parents=True, exist_ok=True)
    (advseg_home() / "t-badhash.bin").write_bytes(b"tampered")
    with pytest.raises(WeightsMismatchError, match="sha256"):
        resolve_weights("t-badhash")


def test_missing_weights_error_names_file_place_and_option() -> None:
    _spec("t-missing")
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("t-missing")
    message = str(info.value)
    assert "t-missing.bin" in message and str(advseg_home()) in message and "--weights" in message
    assert "\n" not in message


def test_download_is_verified_and_atomic(served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVSEG_OFFLINE", "0")
    _spec("t-download", sha256=DIGEST, url=served)
    resolved = resolve_weights("t-download")
    assert resolved.source == "download" and resolved.path.read_bytes() == CONTENT
    _spec("t-download-bad", sha256="0" * 64, url=served)
    with pytest.raises(WeightsMismatchError):
        resolve_weights("t-download-bad")
    assert not (advseg_home() / "t-download-bad.bin").exists()  # nothing half-trusted left behind


def test_a_published_hash_prefix_is_enough_to_download_and_is_checked(served: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's convention (vgg16-397923af.pth): the file name carries the start of its sha256."""
    monkeypatch.setenv("ADVSEG_OFFLINE", "0")
    _spec("t-prefix", sha256_prefix=DIGEST[:8], url=served)
    resolved = resolve_weights("t-prefix")
    assert resolved.source == "download" and resolved.sha256 == DIGEST
    _spec("t-prefix-bad", sha256_prefix="397923af", url=served)
    with pytest.raises(WeightsMismatchError, match="expected 397923af"):
        resolve_weights("t-prefix-bad")
    assert not (advseg_home() / "t-prefix-bad.bin").exists()


def test_an_unreachable_weights_host_says_where_else_the_file_can_come_from(monkeypatch: pytest.MonkeyPatch) -> None:
    from advseg_cli.download import HostUnreachableError

    monkeypatch.setenv("ADVSEG_OFFLINE", "0")
    _spec("t-down", sha256_prefix="397923af", url="http://127.0.0.1:9/w.bin")  # port 9: nothing listens
    with pytest.raises(HostUnreachableError) as caught:
        resolve_weights("t-down")
    message = str(caught.value)
    assert "cannot reach 127.0.0.1" in message and "get it from the test" in message and "--weights PATH" in message
    assert "--mirror" not in message  # that option belongs to `advseg data`, not to weights


def test_offline_never_downloads(served: str) -> None:
    _spec("t-offline", sha256=DIGEST, url=served)
    with pytest.raises(WeightsNotFoundError):
        resolve_weights("t-offline")


def test_run_record_round_trip_and_conflicts(tmp_path: Path) -> None:
    record = RunRecord(stage="edges", options={"size": 256, "method": "hed"})
    record.add_failure("a.jpg", "empty file")
    record.counts["done"] = 3
    record.finish()
    path = record_path_for(tmp_path)
    record.write(path)
    data = read_record(path)
    assert data["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    assert data["failures"] == [{"input": "a.jpg", "reason": "empty file"}]
    assert data["status"] == "complete" and data["ended"]
    assert conflicting_options(data["options"], {"size": 128, "method": "hed"}, ("size", "method")) == [
        "size: 256 -> 128"]
    assert record_path_for(tmp_path, (1, 4)).name == "advseg-run.shard-1-of-4.json"
    assert record_path_for(tmp_path / "maps.h5").name == "maps.h5.run.json"
    json.loads(path.read_text())  # plain JSON a person can read


def test_advseg_weights_lists_where_each_file_is_found_without_downloading(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from advseg_cli.weights import torch_hub_checkpoints
    from tests.helpers import invoke_advseg, write_vgg16_weights

    monkeypatch.setenv("ADVSEG_OFFLINE", "0")  # listing must not fetch even when it could
    write_vgg16_weights(torch_hub_checkpoints() / "vgg16-397923af.pth")  # random: not torchvision's hash
    listing = invoke_advseg("weights")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split(" ")[0]: line for line in listing.stdout.splitlines()}
    assert set(lines) >= {"hed-bsds500", "inception-fid", "vgg16-imagenet"}
    assert "missing: download it from https://github.com/mseitzer/pytorch-fid" in lines["inception-fid"]
    assert "advseg fid --weights PATH" in lines["inception-fid"]
    assert "REFUSED" in lines["vgg16-imagenet"] and "397923af" in lines["vgg16-imagenet"]
    assert not (advseg_home() / "vgg16-397923af.pth").exists()


def test_advseg_weights_need_checks_every_named_file_in_one_line(tmp_path: Path) -> None:
    from tests.helpers import invoke_advseg, write_vgg16_weights

    mine = write_vgg16_weights(tmp_path / "my-vgg.pth")
    fine = invoke_advseg("weights", "--need", f"vgg16-imagenet={mine}")
    assert fine.returncode == 0 and f"vgg16-imagenet: {mine.resolve()}" in fine.stdout
    missing = invoke_advseg("weights", "--need", "inception-fid", "--need", f"vgg16-imagenet={tmp_path / 'nope.pth'}")
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "pt_inception-2015-12-05-6726825d.pth not found" in missing.stderr and "nope.pth: no such file" in missing.stderr


def test_advseg_weights_need_checks_a_segmentation_backend_without_building_it(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from tests.helpers import invoke_advseg
    from tests.segmentation.tiny_mask2former import save_tiny_mask2former

    folder = save_tiny_mask2former(tmp_path / "m2f")
    ready = invoke_advseg("weights", "--need", f"seg:mask2former={folder}")
    assert ready.returncode == 0 and f"seg:mask2former: {folder} (explicit)" in ready.stdout
    (folder / "model.safetensors").unlink()
    gone = invoke_advseg("weights", "--need", f"seg:mask2former={folder}", "--need", "seg:nope")
    assert gone.returncode == 2 and "no model.safetensors" in gone.stderr and "unknown segmentation backend" in gone.stderr
    listing = invoke_advseg("weights")
    assert "seg:mask2former (segcache / train --advseg): not ready:" in listing.stdout
