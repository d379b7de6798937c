"""``advseg data``: the paper's datasets (work in advseg_cli.datasets; the shapes world's in advseg_cli.world).

``advseg data list`` shows them; ``advseg data prepare NAME ROOT`` builds ``ROOT/NAME`` (fetch ->
edges -> segcache); ``advseg data freeze NAME ROOT`` writes the list of a prepared dataset with every
photo's size and sha256, which is how the lists in data/lists/ are made.
"""

from __future__ import annotations

from pathlib import Path

import click

from advseg_cli.help import FullSummaryGroup


@click.group(cls=FullSummaryGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def data() -> None:
    """The paper's datasets and the shapes world: list them, prepare one, freeze its file list."""


@data.command("list")
def list_datasets() -> None:
    """The datasets advseg knows, where they come from and their split in the paper."""
    from advseg_cli.datasets.catalog import DATASETS

    for spec in DATASETS.values():
        shipped = "list shipped" if spec.shipped_list().is_file() else "list derived on first prepare"
        origin = {"coco": "COCO 2017, photo by photo", "archive": "one archive download",
                  "folder": "you provide it (--source)", "generated": "rendered here, offline (--seed)"}[spec.kind]
        if spec.kind == "generated":
            shipped = "ground truth in truth/, its own trained Seg (--backend shapes)"
        click.echo(f"{spec.name:<13} {spec.title}; {origin}; {shipped}; paper: {spec.paper_split}")


@data.command("prepare")
@click.argument("name")
@click.argument("root", type=click.Path(path_type=Path, file_okay=False))
@click.option("--steps", default=None, show_default="fetch,edges,segcache; shapes: fetch,seg,edges,segcache",
              help="Comma-separated steps to run, in order: fetch (shapes: render), seg (shapes: train its Seg), "
                   "edges, segcache.")
@click.option("--source", type=click.Path(path_type=Path),
              help="illustration / cityscapes: the folder you obtained from the dataset's authors.")
@click.option("--lists", type=click.Path(path_type=Path, file_okay=False),
              help="A folder with NAME.tsv to use instead of the list that ships in data/lists.")
@click.option("--mirror", envvar="ADVSEG_DATA_MIRROR", metavar="URL",
              show_default="$ADVSEG_DATA_MIRROR, else the datasets' own hosts",
              help="scheme://host:port that serves the same paths as the datasets' hosts.")
@click.option("--downloads", type=click.Path(path_type=Path, file_okay=False),
              show_default="ROOT/downloads", help="Where archives are kept (resumable).")
@click.option("--edges-size", default=None, type=click.IntRange(min=0), show_default="256; shapes: 0, the photo's",
              help="Sketch side (advseg edges --size).")
@click.option("--hed-weights", type=click.Path(path_type=Path), help="advseg edges --weights.")
@click.option("--seg-backend", default=None, metavar="panoptic-fpn|mask2former|shapes",
              show_default="panoptic-fpn; shapes: shapes", help="advseg segcache --backend.")
@click.option("--seg-weights", type=click.Path(path_type=Path), help="advseg segcache --weights.")
@click.option("--seg-square", default=None, type=click.IntRange(min=0), show_default="286; shapes: 0, the photo's",
              help="Segment photos resized to this square, as the training loader resizes them "
                   "(advseg segcache --square; use train's --load-size).")
@click.option("--seed", default=0, type=int, help="shapes: the world's seed (same seed, byte-identical photos).")
@click.option("--world-train", default=1000, type=click.IntRange(min=1), help="shapes: training photos.")
@click.option("--world-test", default=200, type=click.IntRange(min=1), help="shapes: test photos.")
@click.option("--world-size", default=128, type=click.IntRange(min=32), help="shapes: photo side in pixels.")
@click.option("--seg-out", type=click.Path(path_type=Path, file_okay=False), show_default="ADVSEG_HOME",
              help="shapes: where its trained Seg (shapes-seg.safetensors, shapes-seg-eval.safetensors) goes.")
@click.option("--seg-epochs", default=8, type=click.IntRange(min=1), help="shapes: epochs of its Seg's training.")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N (edges and segcache).")
@click.option("--batch-size", default=0, type=click.IntRange(min=0),
              help="Photos per forward pass (0: each stage's default).")
@click.option("--workers", default=None, type=click.IntRange(min=0),
              show_default="each stage's own choice", help="DataLoader processes.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def prepare(name: str, root: Path, steps: str | None, source: Path | None, lists: Path | None,
            mirror: str | None, downloads: Path | None, edges_size: int | None, hed_weights: Path | None,
            seg_backend: str | None, seg_weights: Path | None, seg_square: int | None, seed: int, world_train: int,
            world_test: int, world_size: int, seg_out: Path | None, seg_epochs: int, device: str, batch_size: int,
            workers: int | None, quiet: bool) -> None:
    """Build ROOT/NAME/{trainA,trainB,testA,testB} and segmaps.h5 for dataset NAME.

    A = sketches (advseg edges), B = photos. Every step skips finished work, so re-running after an
    interruption continues; downloads resume and are verified (size, sha256/sha1, full decode).
    """
    from advseg_cli.datasets.catalog import dataset_spec
    from advseg_cli.datasets.prepare import PrepareConfig, prepare_dataset
    from advseg_cli.edges import EdgesConfig
    from advseg_cli.segcache import SegcacheConfig
    from advseg_cli.world.render import WorldConfig
    from advseg_cli.world.seg_training import SegTrainingConfig

    spec = dataset_spec(name)
    config = PrepareConfig(
        steps=None if steps is None else tuple(step.strip() for step in steps.split(",") if step.strip()),
        source=source, lists=lists, mirror=mirror, downloads=downloads, quiet=quiet,
        edges=EdgesConfig(size=spec.edges_size if edges_size is None else edges_size, weights=hed_weights,
                          device=device, batch_size=batch_size, workers=-1 if workers is None else workers,
                          quiet=quiet),
        segcache=SegcacheConfig(backend=seg_backend or spec.seg_backend, weights=seg_weights,
                                square=spec.seg_square if seg_square is None else seg_square, device=device,
                                batch_size=batch_size, workers=workers or 0, quiet=quiet),
        world=WorldConfig(seed=seed, train=world_train, test=world_test, size=world_size),
        seg_training=SegTrainingConfig(epochs=seg_epochs, quiet=quiet), seg_out=seg_out)
    summary = prepare_dataset(name, root, config)
    counts = ", ".join(f"{key} {value}" for key, value in summary.counts.items())
    failed = f"; {summary.failed} failed (see the run records)" if summary.failed else ""
    click.echo(f"data prepare {name}: {', '.join(summary.steps_run)} -> {summary.folder} ({counts}){failed}")


@data.command("freeze")
@click.argument("name")
@click.argument("root", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              show_default="data/lists/NAME.tsv", help="Where to write the list.")
def freeze(name: str, root: Path, out: Path | None) -> None:
    """Write NAME's list with the size and sha256 of every fetched photo (for shipping in data/lists)."""
    from advseg_cli.datasets.catalog import dataset_spec
    from advseg_cli.datasets.prepare import freeze_list

    spec = dataset_spec(name)
    target = out or spec.shipped_list()
    count = freeze_list(spec, root, target)
    click.echo(f"data freeze {name}: {count} photos with size and sha256 -> {target}")

