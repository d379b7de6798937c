"""The world's own steps of ``advseg data prepare shapes``: render its photos, train its Seg.

They live here, not in :mod:`advseg_cli.datasets.prepare`, because what they do is the world's
business (its renderer, its segmenters' roles and files); prepare only decides when they run and
where the dataset's record goes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from advseg_cli.interrupts import same_command, signals_deferred
from advseg_cli.runrecord import RunRecord
from advseg_cli.world.render import WorldConfig, render_world, rendered_photos
from advseg_cli.world.seg import world_segmenter_path
from advseg_cli.world.seg_training import SegTrainingConfig, describe_scores, ensure_trained


def render_step(folder: Path, world: WorldConfig, record_path: Path, interrupted_path: Path,
                quiet: bool = False) -> RunRecord:
    """A generated dataset's "fetch": render its photos and ground truth into ``folder``.

    ``record_path`` is written only once the render is complete: its presence means "fetched", which
    later steps and ``data freeze`` rely on. A signal leaves ``interrupted_path`` instead ("interrupted",
    how many photos are in place, the command that continues), never the dataset's record; both carry
    the world's settings, so a render with other settings is refused rather than mixed into the folder.
    """
    record = RunRecord("data-render", {"dataset": "shapes", "world": dataclasses.asdict(world)})
    try:
        render_world(folder, world, quiet=quiet, records=(record_path, interrupted_path))
    except KeyboardInterrupt:
        with signals_deferred():  # a second signal must not cut this record: it is the only one saying so
            record.counts = {"done": rendered_photos(folder, world), "skipped": 0, "failed": 0,
                             "planned": world.train + world.test}
            record.extra["continue_with"] = same_command()
            record.finish("interrupted")
            record.write(interrupted_path)
        raise
    record.counts = {"done": world.train + world.test, "skipped": 0, "failed": 0}
    record.extra.update(splits={"train": world.train, "test": world.test}, truth="truth/",
                        paper_split="not in the paper: a controlled world with exact ground truth")
    record.finish()
    record.write(record_path)
    interrupted_path.unlink(missing_ok=True)  # after the dataset's record: one of the two always says where it is
    return record


def seg_step(roles: tuple[str, ...], seg_out: Path | None, training: SegTrainingConfig, quiet: bool = False) -> None:
    """Train each of ``roles``' segmenters unless its weights are there already, and say which."""
    for role in roles:
        path = world_segmenter_path(role, seg_out)
        record, trained = ensure_trained(role, path, training)
        what = "trained" if trained else "already there"
        if not quiet:
            print(f"data prepare shapes: {role} segmenter {what}: {path} ({describe_scores(record)})", flush=True)
