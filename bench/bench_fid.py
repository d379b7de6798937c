"""Benchmark: ``advseg fid`` against ``python -m pytorch_fid`` on the same folders, same device.

Three timed command-line runs (each a fresh process, as a user runs them): pytorch-fid on REAL and
FAKE; ``advseg fid`` on the same folders with an empty statistics cache (it computes both sides and
caches REAL's); ``advseg fid`` again (REAL from the cache, only FAKE computed). Wall times include
process start, model load and the 2048x2048 matrix square root of the Frechet distance, which is
timed on its own as well, since on a CPU it can cost as much as the images.

Without the real Inception weights (``pt_inception-2015-12-05-6726825d.pth`` in $ADVSEG_HOME or
torch hub's cache) both tools use a random-weights file of the real layout; speed does not depend on
the weight values, and the table says which was used.

    python bench/bench_fid.py --images 50 --size 256 --device auto
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytorch_fid
import pytorch_fid.inception
import torch
import torchvision
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advseg_cli.devices import resolve_device  # noqa: E402
from advseg_cli.errors import WeightsNotFoundError  # noqa: E402
from advseg_cli.fid import INCEPTION_WEIGHTS, frechet_distance, resolve_inception_weights  # noqa: E402
from bench.machine import describe_machine  # noqa: E402

REAL_PHOTOS = ("astronaut", "coffee", "chelsea")
FAKE_PHOTOS = ("rocket", "hubble_deep_field", "immunohistochemistry")

# `advseg fid` through the real click group, whether or not cli.py registers the command yet.
ADVSEG_FID = ("import sys; from advseg_cli.cli import main; from advseg_cli.commands.fid import fid; "
              "main.commands.setdefault('fid', fid); main(['fid', *sys.argv[1:]])")


def make_folder(folder: Path, photos: tuple[str, ...], count: int, size: int, suffix: str, seed: int) -> None:
    """``count`` different size x size crops of scikit-image's real photos."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    sources = [getattr(data, name)() for name in photos]
    for index in range(count):
        photo = sources[index % len(sources)]
        side = min(photo.shape[:2]) // 2
        top, left = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crop = Image.fromarray(np.ascontiguousarray(photo[top:top + side, left:left + side, :3]))
        crop.resize((size, size), Image.BICUBIC).save(folder / f"{index:04d}{suffix}", quality=95)


def random_weights_home(work: Path) -> Path:
    """A torch home whose hub cache holds a seeded random-weights file of the real layout."""
    template = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None,
                                               init_weights=False).state_dict()
    with mock.patch.object(pytorch_fid.inception, "load_state_dict_from_url", lambda *a, **k: template):
        net = pytorch_fid.inception.fid_inception_v3()
    torch.manual_seed(0)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(module.weight)
    home = work / "torch-home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(net.state_dict(), home / "hub" / "checkpoints" / INCEPTION_WEIGHTS.filename)
    return home


def timed_run(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def sqrtm_seconds(images: int, dims: int) -> float:
    """One Frechet distance (pytorch-fid's code) of covariances of ``images`` samples, as in the runs."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(images, dims)), rng.normal(size=(images, dims))
    start = time.perf_counter()
    frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    return time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    """The options (also read by bench/gpu_check.py, which checks its commands against them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50, help="images per side")
    parser.add_argument("--size", type=int, default=256, help="image side (px); Inception resizes to 299")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    device = resolve_device(args.device)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-fid-"))
    try:
        real, fake = work / "real", work / "fake"
        make_folder(real, REAL_PHOTOS, args.images, args.size, ".jpg", seed=1)
        make_folder(fake, FAKE_PHOTOS, args.images, args.size, ".png", seed=2)
        env = {**os.environ, "ADVSEG_HOME": str(work / "advseg-home"), "ADVSEG_OFFLINE": "1"}
        try:
            weights = resolve_inception_weights()
            official = f"the Inception weights file found at {weights.path} (sha256 {weights.sha256[:12]}...)"
            if weights.source == "cache":  # pytorch-fid looks only in torch hub's cache: give it the same file
                home = work / "torch-home"
                (home / "hub" / "checkpoints").mkdir(parents=True)
                shutil.copy(weights.path, home / "hub" / "checkpoints" / INCEPTION_WEIGHTS.filename)
                env["TORCH_HOME"] = str(home)
        except WeightsNotFoundError:
            env["TORCH_HOME"] = str(random_weights_home(work))
            official = ("RANDOM weights in the real layout (the real pt_inception-2015-12-05 file is absent; "
                        "speed does not depend on weight values)")
        common = ["--device", str(device), "--batch-size", str(args.batch_size)]
        reference = [sys.executable, "-m", "pytorch_fid", str(real), str(fake), *common,
                     "--num-workers", str(args.workers), "--dims", "2048"]
        ours = [sys.executable, "-c", ADVSEG_FID, str(real), str(fake), *common, "--workers", str(args.workers),
                "--dims", "2048", "--json", "--quiet"]
        ref_s, ref_out = timed_run(reference, env)
        cold_s, cold_out = timed_run(ours, env)
        warm_s, warm_out = timed_run(ours, env)
        sqrtm_s = sqrtm_seconds(args.images, 2048)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ref_fid = float([line for line in ref_out.splitlines() if line.startswith("FID:")][-1].split()[-1])
    cold, warm = json.loads(cold_out), json.loads(warm_out)
    assert warm["real"]["source"] == "cache", "the second run should take REAL from the cache"
    pairs = 2 * args.images
    print(f"Machine: {describe_machine(device)}; pytorch-fid {pytorch_fid.__version__}, device {device}; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other work on the machine)")
    print(f"{args.images} + {args.images} images of {args.size}x{args.size} px (REAL .jpg, FAKE .png), "
          f"--dims 2048, batch {args.batch_size}, {args.workers} DataLoader workers; {official}\n")
    print("| run | Inception forwards | wall s | images/s | FID |")
    print("|---|---|---|---|---|")
    print(f"| `python -m pytorch_fid REAL FAKE` | {pairs} | {ref_s:.1f} | {pairs / ref_s:.2f} | {ref_fid:.6f} |")
    print(f"| `advseg fid REAL FAKE` (empty cache) | {pairs} | {cold_s:.1f} | {pairs / cold_s:.2f} | "
          f"{cold['fid']:.6f} |")
    print(f"| `advseg fid REAL FAKE` again (REAL from cache) | {args.images} | {warm_s:.1f} | {pairs / warm_s:.2f} | "
          f"{warm['fid']:.6f} |")
    print(f"\nimages/s = {pairs} images evaluated / wall time of the whole command (start-up, weights, "
          f"features, Frechet distance). The 2048-d Frechet distance alone (scipy sqrtm) takes {sqrtm_s:.1f} s "
          f"here. |FID(advseg) - FID(pytorch-fid)| / FID = {abs(cold['fid'] - ref_fid) / ref_fid:.1e}.")


if __name__ == "__main__":
    main()
