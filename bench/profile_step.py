"""Profile: where one CPU training step's time goes, per network (forward and backward) and per kind of op.

torch.profiler records the real ``Trainer.step`` (translate, generator losses, backward, Adam, discriminator
losses, backward, Adam; with ``--log-seg-grad-norm`` its extra backward passes on the steps that log them)
and the data loading before it (``workers 0``, so that its cost is seen instead of hidden in workers).

Attribution, without guessing from op names:

* **forward per network**: every top-level network of the model (G, D, D_M, D_Bin, G_A, ... and Seg's
  ``soft_probs`` / ``hard_labels``) runs inside a ``module::NAME`` profiler range, set by forward hooks;
* **backward per network**: autograd gives each node the sequence number of the forward op that made it,
  and the profiler records it on both; a backward node is counted for the network whose range held its
  forward op (the losses' own ops, outside every network, count as "losses");
* **per kind of op**: the self time of every op, grouped: convolution, normalisation, padding,
  dtype conversions and copies, optimizer (everything under ``Optimizer.step``), gradient accumulation,
  the rest (elementwise, reductions, allocation).

The profiler adds its own cost per op (a few microseconds), which weighs more at small widths: the step
time with and without the profiler is printed too, interleaved, so the distortion is visible.

    python bench/profile_step.py --threads 1                    # both settings below
    python bench/profile_step.py --threads 1 --setting small    # the experiment's setting only

Settings: ``wide`` is CycleGAN and Pix2Pix + both (soft) at ngf/ndf 64, 128 px crops, the reduced random
Mask2Former as Seg (bench_train.py's CPU Seg); ``small`` is seg-effect's default preset (Pix2Pix, instance
norm, ngf/ndf 16, 64 px crops from 72, the shapes world's FCN Seg with random weights of its architecture,
gradient norms logged every 10 steps) with advseg none and both. Timing depends on the architectures, not on
the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import advseg_cli.training.loop as loop_module  # noqa: E402
from advseg_cli.segcache import SegcacheConfig, build_segcache  # noqa: E402
from advseg_cli.training.loop import TrainConfig, Trainer, _to_device, make_loader  # noqa: E402
from bench.bench_train import make_dataset, prepare_seg  # noqa: E402
from bench.machine import describe_machine  # noqa: E402

MODULE_RANGE = "module::"
BACKWARD_PREFIX = "autograd::engine::evaluate_function: "


@dataclasses.dataclass(frozen=True)
class Case:
    """One profiled training configuration."""

    setting: str
    model: str
    advseg: str
    size: int
    ngf: int
    ndf: int
    seg: str  # "mask2former-tiny-random" | "shapes-fcn-random"
    norm: str | None = None  # the model's norm where it differs from its default
    log_seg_grad_norm: bool = False

    @property
    def name(self) -> str:
        return f"{self.setting}: {self.model} + {self.advseg}"


CASES: dict[str, list[Case]] = {
    "wide": [Case("wide", "cyclegan", "both", 128, 64, 64, "mask2former-tiny-random"),
             Case("wide", "pix2pix", "both", 128, 64, 64, "mask2former-tiny-random")],
    "small": [Case("small", "pix2pix", "none", 64, 16, 16, "shapes-fcn-random", "instance", True),
              Case("small", "pix2pix", "both", 64, 16, 16, "shapes-fcn-random", "instance", True)],
}


# ----------------------------------------------------------------------------- the ranges
class NetworkRanges:
    """``module::NAME`` profiler ranges around each top-level network's forward (and Seg's methods)."""

    SEG_METHODS = ("soft_probs", "hard_labels", "hard_and_soft")

    def __init__(self, model: torch.nn.Module) -> None:
        self.handles: list[Any] = []
        self.open: list[Any] = []
        self.seg = getattr(model, "seg", None)
        for name, child in model.named_children():
            if child is self.seg:
                continue
            self.handles.append(child.register_forward_pre_hook(self._opener(name)))
            self.handles.append(child.register_forward_hook(self._closer()))
        if self.seg is not None:
            for method in self.SEG_METHODS:
                if hasattr(self.seg, method):
                    setattr(self.seg, method, self._ranged(getattr(self.seg, method)))

    def _opener(self, name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            scope = record_function(MODULE_RANGE + name)
            scope.__enter__()
            self.open.append(scope)
        return hook

    def _closer(self) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            self.open.pop().__exit__(None, None, None)
        return hook

    @staticmethod
    def _ranged(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with record_function(MODULE_RANGE + "Seg"):
                return method(*args, **kwargs)
        return call

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        if self.seg is not None:
            for method in self.SEG_METHODS:
                self.seg.__dict__.pop(method, None)


# ----------------------------------------------------------------------------- attribution
def enclosing_network(event: Any) -> str | None:
    """The ``module::NAME`` range an op ran in (its nearest such ancestor), or None."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(MODULE_RANGE):
            return parent.name[len(MODULE_RANGE):]
        parent = parent.cpu_parent
    return None


def within(event: Any, prefix: str) -> bool:
    """Whether ``event`` or one of its ancestors is named ``prefix...``."""
    parent = event
    while parent is not None:
        if parent.name.startswith(prefix):
            return True
        parent = parent.cpu_parent
    return False


def op_kind(event: Any) -> str:
    """The group of an op's self time (aten's names; a backward op is grouped with its forward's kind)."""
    if within(event, "profiled::data"):
        return "data loading"
    if within(event, "Optimizer.step") or within(event, "Optimizer.zero_grad"):
        return "optimizer (Adam, zero_grad)"
    lowered = event.name.lower()
    if "accumulategrad" in lowered:
        return "gradient accumulation"
    if "conv" in lowered:
        return "convolution"
    if "norm" in lowered:
        return "normalisation"
    if "pad" in lowered:
        return "padding"
    if lowered in ("aten::to", "aten::_to_copy", "aten::copy_", "aten::contiguous", "aten::clone"):
        return "dtype conversions and copies"
    return "other ops (elementwise, reductions, allocation)"


def forward_networks(events: list[Any]) -> dict[tuple[int, int], str]:
    """(thread, sequence number) of each forward op -> the network whose range it ran in."""
    found: dict[tuple[int, int], str] = {}
    for event in events:
        if event.sequence_nr < 0 or within(event, BACKWARD_PREFIX):
            continue
        network = enclosing_network(event)
        if network is not None:
            found.setdefault((event.thread, event.sequence_nr), network)
    return found


def attribute(events: list[Any], steps: int) -> dict[str, Any]:
    """Per-step milliseconds: per network forward / backward, per op kind, data loading, whole step."""
    origin = forward_networks(events)
    forward: dict[str, float] = defaultdict(float)
    backward: dict[str, float] = defaultdict(float)
    kinds: dict[str, float] = defaultdict(float)
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        name = event.name
        if name.startswith(MODULE_RANGE) and enclosing_network(event) is None:
            forward[name[len(MODULE_RANGE):]] += event.cpu_time_total
        elif name.startswith(BACKWARD_PREFIX) and not within(event.cpu_parent, BACKWARD_PREFIX):
            if "AccumulateGrad" in name:
                backward["(gradient accumulation)"] += event.cpu_time_total
            else:
                backward[origin.get((event.fwd_thread, event.sequence_nr), "losses")] += event.cpu_time_total
        if name in ("profiled::step", "profiled::data"):
            totals[name.split("::")[1]] += event.cpu_time_total
        elif not name.startswith(MODULE_RANGE):
            kinds[op_kind(event)] += event.self_cpu_time_total
    scale = 1.0 / 1000.0 / steps  # profiler microseconds -> milliseconds per step
    return {"step_ms": totals["step"] * scale, "data_ms": totals["data"] * scale,
            "forward_ms": {k: v * scale for k, v in sorted(forward.items())},
            "backward_ms": {k: v * scale for k, v in sorted(backward.items())},
            "op_kinds_ms": {k: v * scale for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}}


# ----------------------------------------------------------------------------- running
def load_size(case: Case) -> int:
    """The resize before the crop: the public 286/256 ratio (wide), the experiment's 72 for 64 (small)."""
    return 2 * round(case.size * 286 / 256 / 2) if case.setting == "wide" else 72


def build_trainer(case: Case, data: Path, segcache: Path | None, seg_folder: Path | None, runs: Path,
                  steps: int) -> Trainer:
    options: dict[str, Any] = {"advseg": case.advseg, "ngf": case.ngf, "ndf": case.ndf}
    if case.norm:
        options["norm"] = case.norm
    uses_seg = case.advseg != "none"
    config = TrainConfig(name=case.name.replace(": ", "-").replace(" + ", "-"), sketches=data / "trainA",
                         photos=data / "trainB", model=case.model, model_options=options, runs_dir=runs,
                         segcache=segcache if uses_seg else None, seg_weights=seg_folder if uses_seg else None,
                         load_size=load_size(case),
                         crop_size=case.size, batch_size=1, epochs=1000, epochs_decay=0, device="cpu", workers=0,
                         max_steps=steps, log_every=10, log_seg_grad_norm=case.log_seg_grad_norm,
                         sample_every=10**9, save_every=10**9, save_epoch_every=10**9, quiet=True)
    return Trainer(config)


def batches(trainer: Trainer) -> Iterator[dict[str, Any]]:
    epoch = 0
    while True:
        for batch in make_loader(trainer.dataset, trainer.config, trainer.ddp, epoch, 0):
            yield batch
        epoch += 1


def one_step(trainer: Trainer, source: Iterator[dict[str, Any]], index: int) -> None:
    """Data loading then ``Trainer.step``, as the loop does (the step number drives the logged norms)."""
    with record_function("profiled::data"):
        batch = _to_device(next(source), trainer.device, trainer.config.channels_last)
    trainer.position = dataclasses.replace(trainer.position, step=index)
    with record_function("profiled::step"):
        trainer.step(batch)


def profile_case(trainer: Trainer, warmup: int, steps: int) -> tuple[dict[str, Any], float, float]:
    """(attribution, plain s/step, profiled s/step): plain and profiled steps alternate (same load)."""
    source = batches(trainer)
    ranges = NetworkRanges(trainer.model)
    index = 0
    for _ in range(warmup):
        one_step(trainer, source, index)
        index += 1
    plain: list[float] = []
    profiled: list[float] = []
    events: list[Any] = []
    try:
        for _ in range(steps):
            start = time.process_time()
            one_step(trainer, source, index)
            plain.append(time.process_time() - start)
            index += 1
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                start = time.process_time()
                one_step(trainer, source, index)
                profiled.append(time.process_time() - start)
            index += 1
            events.extend(prof.events())
    finally:
        ranges.remove()
    return attribute(events, steps), statistics.median(plain), statistics.median(profiled)


def shapes_segmenter_factory(arch: str = "fcn") -> Callable[[TrainConfig, torch.device], Any]:
    """The world's training-Seg architecture (``ROLES['seg']``) with random weights, in place of a file."""
    from advseg_cli.world.seg import ShapesSegmenter, build_network

    def build(config: TrainConfig, device: torch.device) -> Any:
        if config.seg_weights is None:
            return None
        torch.manual_seed(0)
        return ShapesSegmenter(build_network(arch), device).freeze()
    return build


def report(case: Case, result: dict[str, Any], plain: float, profiled: float) -> str:
    step = result["step_ms"] + result["data_ms"]
    lines = [f"### {case.name} (ngf/ndf {case.ngf}, {case.size} px, Seg {case.seg})", "",
             f"CPU s/step without the profiler {plain:.3f}, with it {profiled:.3f}; in the profile: step "
             f"{result['step_ms']:.1f} ms + data loading {result['data_ms']:.1f} ms", "",
             "| network | forward ms | backward ms | share of the step % |", "|---|---:|---:|---:|"]
    names = sorted(set(result["forward_ms"]) | set(result["backward_ms"]),
                   key=lambda n: -(result["forward_ms"].get(n, 0) + result["backward_ms"].get(n, 0)))
    for name in names:
        f, b = result["forward_ms"].get(name, 0.0), result["backward_ms"].get(name, 0.0)
        lines.append(f"| {name} | {f:.1f} | {b:.1f} | {100 * (f + b) / step:.1f} |")
    lines.append(f"| data loading | {result['data_ms']:.1f} | | {100 * result['data_ms'] / step:.1f} |")
    lines += ["", "| kind of op (self time) | ms | share % |", "|---|---:|---:|"]
    for kind, ms in result["op_kinds_ms"].items():
        lines.append(f"| {kind} | {ms:.1f} | {100 * ms / step:.1f} |")
    return "\n".join(lines) + "\n"


def steps_of(case: Case, args: argparse.Namespace) -> int:
    return args.steps or (10 if case.setting == "small" else 3)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="all", choices=["all", *CASES])
    parser.add_argument("--steps", type=int, help="profiled steps, each next to an unprofiled one (default: "
                                                 "10 in the small setting, which logs gradient norms every 10th, "
                                                 "3 in the wide one)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(args.threads)
    cases = [case for name, group in CASES.items() if args.setting in ("all", name) for case in group]
    results = []
    with tempfile.TemporaryDirectory(prefix="profile-step-") as tmp:
        root = Path(tmp)
        prepared: dict[tuple[int, str], tuple[Path, Path | None, Path | None]] = {}
        for case in cases:
            key = (case.size, case.seg)
            if key not in prepared:
                data = make_dataset(root / f"data-{case.size}-{case.seg}", args.warmup + 2 * steps_of(case, args) + 4,
                                    case.size)
                seg_folder, _ = prepare_seg("mask2former-tiny-random", root / f"seg-{case.size}")
                segcache = root / f"segcache-{case.size}-{case.seg}.h5"  # real-photo labels (their values do not
                load = load_size(case)  # change the time)
                build_segcache(data / "trainB", segcache,
                               SegcacheConfig(backend="mask2former", weights=seg_folder, square=load, batch_size=8,
                                              workers=0, device="cpu", precision="fp32", quiet=True))
                prepared[key] = (data, segcache, seg_folder)
            data, segcache, seg_folder = prepared[key]
            original = loop_module.build_segmenter_for
            if case.seg == "shapes-fcn-random":
                loop_module.build_segmenter_for = shapes_segmenter_factory()
            try:
                trainer = build_trainer(case, data, segcache, seg_folder, root / "runs", 10**6)
                result, plain, profiled = profile_case(trainer, args.warmup, steps_of(case, args))
            finally:
                loop_module.build_segmenter_for = original
            results.append({"case": dataclasses.asdict(case), **result, "plain_cpu_s": plain, "profiled_cpu_s": profiled})
            print(report(case, result, plain, profiled), flush=True)
    print(f"Machine: {describe_machine(torch.device('cpu'))}; torch {torch.__version__}; {args.threads} thread(s); "
          f"profiled steps as above after {args.warmup} warm-up steps")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
