"""``advseg experiment``: measurements made with the stage functions (work in advseg_cli.experiments)."""

from __future__ import annotations

from pathlib import Path

import click

from advseg_cli.help import FullSummaryGroup


@click.group(cls=FullSummaryGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def experiment() -> None:
    """Experiments that run the stages and measure what they do (results.json, table, plots)."""


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if not text else tuple(part.strip() for part in text.split(",") if part.strip())


@experiment.command("seg-effect")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--preset", type=click.Choice(["quick", "default", "gpu"]), default="default",
              help="quick: minutes, for tests (numbers mean nothing); default: 5 seeds, hours on a 2-core CPU (docs/evidence.md has the measured time; use --jobs 2); "
                   "gpu: larger photos, wider networks, more steps.")
@click.option("--quick", is_flag=True, help="Same as --preset quick.")
@click.option("--models", metavar="LIST", help="Comma-separated models of advseg train: cyclegan, pix2pix, autopainter, "
                                               "cut, fastcut.", show_default="cyclegan,pix2pix")
@click.option("--modes", metavar="LIST", help="Comma-separated modes: none, compat, soft, straight, and the variants "
                                              "soft-real, soft-augment, soft-warmup, soft-balance, soft-all, soft-all-features, "
                                              "consistency "
                                              "(docs/evidence.md says what each sets).",
              show_default="none,compat,soft,straight")
@click.option("--seeds", metavar="LIST", help="Comma-separated seeds.", show_default="the preset's: 0,1 quick, 0-4 else")
@click.option("--device", default="cpu", help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default="0: torch's default",
              help="CPU threads of torch (1 is often fastest for these small networks on a busy machine; "
                   "two processes with --models/--seeds subsets and 1 thread each share a 2-core CPU well).")
@click.option("--jobs", type=click.IntRange(min=1), default=1,
              help="Runs trained at once, each in its own process (of --threads threads, default 1): the runs are "
                   "independent, so on a 2-core CPU --jobs 2 halves the time.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def seg_effect(out: Path, preset: str, quick: bool, models: str | None, modes: str | None, seeds: str | None,
               device: str, threads: int, jobs: int, quiet: bool) -> None:
    """What the adversarial segmentation loss does, in the shapes world: CycleGAN and Pix2Pix (or, with
    --models, also CUT and FastCUT) with --advseg none / both x --seg-grad compat, soft, straight, over seeds;
    scored on held-out sketches by an
    independently trained evaluation segmenter (mIoU), per-pixel error and a Fréchet distance. Re-running
    continues where it stopped."""
    import torch

    from advseg_cli.errors import AdvsegError
    from advseg_cli.experiments.seg_effect import run_seg_effect

    if threads and jobs == 1:
        torch.set_num_threads(threads)
    try:
        seed_list = tuple(int(s) for s in _names(seeds) or ()) or None
    except ValueError:
        raise AdvsegError(f"--seeds: integers separated by commas, got {seeds!r}") from None
    results = run_seg_effect(out, "quick" if quick else preset, device=device, quiet=quiet, models=_names(models),
                             modes=_names(modes), seeds=seed_list, jobs=jobs, threads=threads)
    click.echo((out / "table.md").read_text(encoding="utf-8"), nl=False)
    click.echo(f"seg-effect: {len(results['rows'])} evaluations in {results['seconds']} s -> {out}")
