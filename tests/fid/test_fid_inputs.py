"""What ``advseg fid`` accepts beyond pytorch-fid, and that it stays pytorch-fid's numbers there:
nested folders, mixed image sizes, any-case extensions, undecodable files, the REAL-side cache.
Inception runs at --dims 64 here (its first block only), which is fast on a CPU."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_fid.fid_score import compute_statistics_of_path, get_activations
from skimage import data

from advseg_cli.errors import AdvsegError
from advseg_cli.fid import (FidConfig, compute_fid, decode_image, folder_content_digest, folder_features,
                            load_inception, read_statistics, resolve_inception_weights, statistics_cache_key,
                            tool_versions)
from advseg_cli.images import list_images, read_rgb
from tests.fid.fid_testkit import cpu_options, photo_crops, run_fid, write_folder

CPU = torch.device("cpu")


def test_mixed_sizes_and_nested_folders_get_pytorch_fids_per_image_features(fid_env: Path, tmp_path: Path) -> None:
    """pytorch-fid cannot batch different sizes; each image must still get the features it gets
    alone in pytorch-fid (batch of 1, its own forward), whatever batch it shares with us."""
    folder = tmp_path / "mixed"
    crops = photo_crops([data.astronaut(), data.coffee()], 4, 40, seed=3)
    write_folder(folder, crops[:2])
    Image.fromarray(crops[2][:, :24]).save(folder / "narrow.PNG")  # 40x24, upper-case extension
    (folder / "nested").mkdir()
    Image.fromarray(crops[3]).save(folder / "nested" / "deep.jpg", quality=90)
    relatives = list_images(folder)
    assert [r.as_posix() for r in relatives] == ["img_000.png", "img_001.png", "narrow.PNG", "nested/deep.jpg"]

    model = load_inception(resolve_inception_weights(), 64, CPU)
    ours, failures = folder_features(folder, relatives, model, FidConfig(dims=64, batch_size=4, quiet=True),
                                     CPU, "REAL")
    alone = np.concatenate([get_activations([folder / r], model, batch_size=1, dims=64, device="cpu",
                                            num_workers=0) for r in relatives])
    assert failures == [] and ours.shape == (4, 64)
    np.testing.assert_allclose(ours, alone, rtol=1e-6, atol=1e-7)


def test_decoding_is_pytorch_fids_unless_asked_otherwise(tmp_path: Path) -> None:
    """pytorch-fid's .convert('RGB') keeps the colour under transparent pixels; --decode advseg
    composites on white like the other stages."""
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red everywhere, fully transparent on the left half
    rgba[:, 4:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    as_pytorch_fid = decode_image(tmp_path / "alpha.png", "pytorch-fid")
    expected = torch.from_numpy(np.array(Image.open(tmp_path / "alpha.png").convert("RGB"))).permute(2, 0, 1) / 255
    assert torch.equal(as_pytorch_fid, expected.float())
    as_advseg = decode_image(tmp_path / "alpha.png", "advseg")
    assert torch.equal(as_advseg, torch.from_numpy(read_rgb(tmp_path / "alpha.png").copy()).permute(2, 0, 1) / 255)
    assert as_advseg[:, :, :4].min() == 1.0 and as_pytorch_fid[1:, :, :4].max() == 0.0


def test_undecodable_files_are_reported_skipped_and_counted(fid_env: Path, tmp_path: Path) -> None:
    crops = photo_crops([data.astronaut(), data.coffee()], 3, 32, seed=4)
    clean = write_folder(tmp_path / "clean", crops)
    dirty = write_folder(tmp_path / "dirty", crops)
    (dirty / "truncated.png").write_bytes((clean / "img_000.png").read_bytes()[:100])
    (dirty / "empty.jpg").write_bytes(b"")
    fake = write_folder(tmp_path / "fake", photo_crops([data.chelsea()], 3, 32, seed=5))

    result = run_fid(dirty, fake, "--json", "--no-cache", *cpu_options("--dims", "64"))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["real"]["images"] == 3 and report["real"]["failed"] == 2
    assert sorted(f["input"] for f in report["real"]["failures"]) == ["empty.jpg", "truncated.png"]
    assert "skipped REAL truncated.png" in result.stderr
    # skipped means left out: the value is the clean folder's, not one with placeholder images
    reference = compute_fid(clean, fake, FidConfig(dims=64, device="cpu", cache=False, quiet=True))
    assert report["fid"] == pytest.approx(reference.fid, rel=1e-9)


def test_cache_key_follows_content_and_settings(fid_env: Path, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "real", photo_crops([data.astronaut()], 3, 32, seed=6))
    relatives = list_images(folder)
    weights = resolve_inception_weights()
    digest = folder_content_digest(folder, relatives)

    def key(config: FidConfig, content: str = digest) -> str:
        return statistics_cache_key(content, config, weights, CPU)

    assert key(FidConfig()) == key(FidConfig(batch_size=7, workers=3))  # only rounding order differs
    assert key(FidConfig()) != key(FidConfig(dims=768))
    assert key(FidConfig()) != key(FidConfig(decode="advseg"))
    assert key(FidConfig()) != statistics_cache_key(digest, FidConfig(), weights, torch.device("cuda"))
    pixels = np.array(Image.open(folder / "img_000.png"))
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(folder / "img_000.png")  # same name and size, other content
    edited = folder_content_digest(folder, relatives)
    assert edited != digest
    # A rename alone, into a name that sorts in the same place (so the order of the contents is unchanged):
    # only the paths in the digest can tell the folders apart, and the key must follow them.
    (folder / "img_000.png").rename(folder / "img_000a.png")
    renamed = list_images(folder)
    assert [p.name for p in renamed] == ["img_000a.png", "img_001.png", "img_002.png"]
    assert folder_content_digest(folder, renamed) != edited
    assert key(FidConfig(), folder_content_digest(folder, renamed)) != key(FidConfig(), edited)


def test_the_cached_real_side_is_the_computed_one_and_answers_only_to_its_key(fid_env: Path, tmp_path: Path) -> None:
    """From the cache: the same features, label, image count and failures as when computed; the entry records
    what it was computed from. An entry whose recorded key is another folder's (a file copied or renamed by
    hand) is recomputed, not trusted."""
    real = write_folder(tmp_path / "real", photo_crops([data.astronaut()], 3, 32, seed=6))
    (real / "empty.jpg").write_bytes(b"")
    fake = write_folder(tmp_path / "fake", photo_crops([data.chelsea()], 3, 32, seed=7))
    config = FidConfig(dims=64, device="cpu", quiet=True)
    first, second = compute_fid(real, fake, config), compute_fid(real, fake, config)
    assert (first.real.source, second.real.source) == ("computed", "cache")
    for field in ("label", "path", "kind", "images", "failures", "cache_file"):
        assert getattr(second.real, field) == getattr(first.real, field), field
    assert [failure["input"] for failure in first.real.failures] == ["empty.jpg"]
    np.testing.assert_array_equal(second.real.features, first.real.features)
    meta = read_statistics(first.real.cache_file, "REAL")[3]  # the entry says what it was computed from, and how
    expected = {"folder": str(real.resolve()), "images": 3, "failures": first.real.failures, "dims": 64,
                "decode": config.decode, "weights_sha256": first.weights.sha256, "batch_size": config.batch_size,
                "device": "cpu", "versions": tool_versions()}
    assert {name: meta.get(name) for name in expected} == expected
    assert abs(datetime.datetime.strptime(meta["created"], "%Y-%m-%dT%H:%M:%S%z").timestamp() - time.time()) < 600
    other = write_folder(tmp_path / "other", photo_crops([data.coffee()], 3, 32, seed=8))
    other_entry = compute_fid(other, fake, config).real.cache_file
    first.real.cache_file.write_bytes(other_entry.read_bytes())  # another folder's statistics under this key
    third = compute_fid(real, fake, config)
    assert third.real.source == "computed" and third.fid == pytest.approx(first.fid, rel=1e-9)
    (tmp_path / "none").mkdir()
    with pytest.raises(AdvsegError, match=f"^REAL {tmp_path / 'none'}: no image files found"):
        compute_fid(tmp_path / "none", fake, config)  # named by its side, before any network is loaded


def test_damaged_cache_entry_is_recomputed_not_trusted(fid_env: Path, tmp_path: Path) -> None:
    real = write_folder(tmp_path / "real", photo_crops([data.astronaut()], 3, 32, seed=6))
    fake = write_folder(tmp_path / "fake", photo_crops([data.chelsea()], 3, 32, seed=7))
    config = FidConfig(dims=64, device="cpu", quiet=True)
    first = compute_fid(real, fake, config)
    assert first.real.source == "computed" and first.real.cache_file.is_file()
    first.real.cache_file.write_bytes(b"PK\x03\x04 truncated by a crash")
    second = compute_fid(real, fake, config)
    assert second.real.source == "computed" and second.fid == pytest.approx(first.fid, rel=1e-9)
    third = compute_fid(real, fake, config)
    assert third.real.source == "cache" and third.fid == pytest.approx(first.fid, rel=1e-9)
    assert [p.name for p in third.real.cache_file.parent.iterdir()] == [third.real.cache_file.name]


def test_statistics_files_give_the_folders_fid_and_kid(fid_env: Path, tmp_path: Path) -> None:
    """FID from two saved .npz equals FID from the two folders; with --kid the files keep features,
    so KID from the files equals KID from the folders; pytorch-fid's reader loads our files."""
    real = write_folder(tmp_path / "real", photo_crops([data.astronaut(), data.coffee()], 4, 32, seed=11))
    fake = write_folder(tmp_path / "fake", photo_crops([data.chelsea(), data.rocket()], 4, 32, seed=12))
    options = cpu_options("--dims", "64", "--no-cache", "--kid", "--kid-subsets", "5")
    for folder in (real, fake):
        saved = run_fid(folder, "--save-stats", tmp_path / f"{folder.name}.npz", *options)
        assert saved.exit_code == 0, saved.output
    from_folders = json.loads(run_fid(real, fake, "--json", *options).stdout)
    from_files = json.loads(run_fid(tmp_path / "real.npz", tmp_path / "fake.npz", "--json", *options).stdout)
    assert from_files["fid"] == pytest.approx(from_folders["fid"], rel=1e-12)
    assert from_files["kid"]["mean"] == pytest.approx(from_folders["kid"]["mean"], rel=1e-12)
    assert (from_files["real"]["source"], from_files["real"]["images"]) == ("file", 4)
    assert from_files["weights"] is None  # two statistics files need no network at all
    mu, sigma = compute_statistics_of_path(str(tmp_path / "real.npz"), None, 4, 64, "cpu")
    with np.load(tmp_path / "real.npz") as archive:
        assert sorted(archive.files) == ["features", "mu", "sigma"]
        assert np.array_equal(mu, archive["mu"]) and np.array_equal(sigma, archive["sigma"])
    assert np.allclose(mu, archive_mean(tmp_path / "real.npz"))


def archive_mean(path: Path) -> np.ndarray:
    with np.load(path) as archive:
        return archive["features"].astype(np.float64).mean(axis=0)
