"""Diagnosis: does a CycleGAN colorizer read its own G_B's sketches better than real ones?

CycleGAN's cycle on photos, G_A(G_B(photo)) = photo, is per-pixel supervision of G_A, but only on the
sketches G_B makes. If G_B encodes the colours in them (the "steganography" of CycleGAN), G_A learns to
decode that code and, on real HED sketches that carry none, has to guess the colours. This scores, with
the experiment's evaluation segmenter on the world's test split at the colorizer's size:

* G_A(real test sketch): what the experiment measures;
* G_A(G_B(test photo)): the cycle's reconstruction;
* the same with Gaussian noise of sigma 0.02 / 0.05 / 0.1 added to G_B's sketch (in [-1, 1] units): a
  code that noise destroys is hidden in tiny amplitudes, one that survives is in visible structure;

and writes a picture (photo, real sketch, G_B's sketch, G_A of each) of the first rows.

    python bench/cyclegan_cycle_gap.py RUN_DIR WORLD --out gap.png [--json gap.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advseg_cli.experiments.seg_effect import Scorer  # noqa: E402
from advseg_cli.models.networks import ResnetGenerator  # noqa: E402
from advseg_cli.world.seg import world_segmenter_path  # noqa: E402

NOISE_SIGMAS = (0.02, 0.05, 0.1)


def load_generators(run: Path) -> tuple[dict[str, torch.nn.Module], int]:
    """G_A and G_B of a CycleGAN run's latest checkpoint (weights only), and its step."""
    checkpoint = torch.load(run / "checkpoints" / "latest.pt", weights_only=True, map_location="cpu")
    config = checkpoint["model_config"]
    networks = {}
    for name in ("G_A", "G_B"):
        network = ResnetGenerator(3, 3, config["ngf"], config["norm"], config["dropout"])
        prefix = f"{name}."
        network.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["model"].items() if k.startswith(prefix)})
        networks[name] = network.eval()
    return networks, int(checkpoint["position"]["step"])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_images(tensor: torch.Tensor) -> np.ndarray:
    return ((tensor.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def test_sketches(world: Path, names: list[str], side: int) -> np.ndarray:
    """The real HED sketches of the test photos, grey as three channels, bicubic to ``side``."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(world / "testA" / Path(name).with_suffix(".png").name)
                                .convert("L").convert("RGB").resize((side, side), Image.BICUBIC)) for name in names])


def diagnose(run: Path, world: Path, side: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    networks, step = load_generators(run)
    scorer = Scorer.load(world, world_segmenter_path("eval", None))
    photos, _, _ = scorer.truth_at(side)
    sketches = test_sketches(world, scorer.names, side)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        made_sketches = networks["G_B"](to_tensor(photos))
        outputs = {"G_A(real sketch)": networks["G_A"](to_tensor(sketches)),
                   "G_A(G_B(photo))": networks["G_A"](made_sketches)}
        for sigma in NOISE_SIGMAS:
            noise = torch.randn(made_sketches.shape, generator=generator)
            outputs[f"G_A(G_B(photo) + noise {sigma})"] = networks["G_A"](made_sketches + sigma * noise)
    images = {name: to_images(value) for name, value in outputs.items()}
    made = to_images(made_sketches)
    report = {"run": str(run), "step": step, "side": side, "test_photos": len(photos),
              "G_B_sketch_vs_real_sketch_mae": float(np.abs(made.astype(float) - sketches).mean()),
              "scores": {name: scorer.score(value) for name, value in images.items()}}
    return report, {"photos": photos, "sketches": sketches, "made_sketches": made, **images}


def write_picture(pictures: dict[str, np.ndarray], rows: int, path: Path) -> None:
    from PIL import Image

    columns = ("photos", "sketches", "made_sketches", "G_A(real sketch)", "G_A(G_B(photo))")
    grid = np.concatenate([np.concatenate([pictures[c][i] for c in columns], 1) for i in range(rows)], 0)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a CycleGAN run folder (checkpoints/latest.pt)")
    parser.add_argument("world", type=Path, help="the experiment's world, OUT/world/shapes")
    parser.add_argument("--side", type=int, default=64, help="the colorizer's size (the training crop)")
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True, help="the picture (PNG)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (args.run / "checkpoints" / "latest.pt").is_file():
        parser.error(f"{args.run}: no checkpoints/latest.pt; pass a CycleGAN run folder")
    torch.set_num_threads(1)
    report, pictures = diagnose(args.run, args.world, args.side)
    write_picture(pictures, args.rows, args.out)
    print(f"step {report['step']}; G_B's sketches differ from the real ones by "
          f"{report['G_B_sketch_vs_real_sketch_mae']:.1f} levels (MAE)")
    for name, scores in report["scores"].items():
        print(f"  {name:34s} mIoU {scores['miou']:.3f}  MAE {scores['mae']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
