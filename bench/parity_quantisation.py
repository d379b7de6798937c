"""How much of the public code's higher MAE in bench_parity.py is its 8-bit saving, not its learning.

The public ``tensor2im`` truncates ``(x + 1) / 2 * 255`` to uint8 where our colorize rounds it, so its
saved images are darker by half a level on average. This script takes **our** parity runs' generators,
colorizes the test sketches once in float, quantises the same outputs both ways (``colorize.quantise``
"deterministic" rounds, "public" truncates) and scores both with seg-effect's Scorer: the difference is
the bias that the saving alone puts on an MAE, measured on generators of this world. As a check of the
method, the rounded scores must equal the MAE that bench_parity stored for each run.

    python bench/parity_quantisation.py --parity parity --world OUT/world/shapes \\
        --eval-weights ~/.cache/advseg/shapes-seg-eval.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advseg_cli.colorize import (ColorizeConfig, generate, load_generator, prepare_sketch, quantise,  # noqa: E402
                                 resolve_geometry)
from advseg_cli.experiments.seg_effect import Scorer  # noqa: E402
from advseg_cli.images import read_rgb  # noqa: E402


def colorize_in_float(run: Path, world: Path, names: list[str], size: int) -> torch.Tensor:
    """The generator's [-1, 1] outputs for every test sketch, in eval mode, as colorize's deterministic mode."""
    loaded = load_generator(run)
    network = loaded.network.eval()
    geometry = resolve_geometry(ColorizeConfig(size=size), loaded)
    inputs = [prepare_sketch(read_rgb(world / "testA" / name), Path(name), geometry).network_input for name in names]
    with torch.no_grad():
        return torch.cat([generate(network, inputs[i:i + 16], torch.device("cpu"), "fp32")
                          for i in range(0, len(inputs), 16)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parity", type=Path, required=True, help="bench_parity.py's --out")
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--eval-weights", type=Path, required=True)
    parser.add_argument("--size", type=int, default=64, help="the crop size the runs trained at")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scorer = Scorer.load(args.world, args.eval_weights)
    rows = []
    for run in sorted((args.parity / "ours" / "runs").iterdir()):
        outputs = colorize_in_float(run, args.world, scorer.names, args.size)
        rounded = scorer.score(quantise(outputs, "deterministic"))
        truncated = scorer.score(quantise(outputs, "public"))
        stored = json.loads(sorted((args.parity / "ours" / "evals" / run.name).glob("*.json"))[-1].read_text())
        if abs(rounded["mae"] - stored["mae"]) > 1e-6:
            raise SystemExit(f"{run.name}: rounded MAE {rounded['mae']:.4f} is not the stored {stored['mae']:.4f}; "
                             "this script does not colorize as bench_parity did")
        rows.append({"run": run.name, "mae_rounded": rounded["mae"], "mae_truncated": truncated["mae"],
                     "miou_rounded": rounded["miou"], "miou_truncated": truncated["miou"]})
        print(f"{run.name}: MAE rounded {rounded['mae']:.3f}, truncated {truncated['mae']:.3f} "
              f"({truncated['mae'] - rounded['mae']:+.3f}); mIoU {rounded['miou']:.4f} / {truncated['miou']:.4f}")
    bias = np.array([row["mae_truncated"] - row["mae_rounded"] for row in rows])
    print(f"truncation moves the MAE by {bias.mean():+.3f} levels (runs: {bias.min():+.3f} .. {bias.max():+.3f})")
    (args.parity / "quantisation.json").write_text(json.dumps({"runs": rows, "mae_bias_mean": float(bias.mean())},
                                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
