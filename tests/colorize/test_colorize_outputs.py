"""What colorize leaves in OUT: resumable results, a run record that guards the folder, per-file failures,
and the --grid sheets with their index.html gallery."""

from __future__ import annotations

import html.parser
import json
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advseg_cli.colorize import ColorizeConfig, colorize_folder
from advseg_cli.errors import AllInputsFailedError, IncompatibleInputError
from tests.colorize.kit import CPU, NAMES, png, result_of, save_public, tiny_generator, write_sketches


def outputs(out: Path) -> list[Path]:
    return [out / Path(name).with_suffix(".png") for name in NAMES]


def test_a_second_run_skips_everything_and_a_damaged_result_is_redone(public_resnet: Path, sketches: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = ColorizeConfig(size=32, **CPU)
    assert colorize_folder(public_resnet, sketches, out, config).done == 3
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in outputs(out)}
    again = colorize_folder(public_resnet, sketches, out, config)
    assert (again.done, again.skipped, again.failed) == (0, 3, 0)
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in outputs(out)} == before
    damaged = outputs(out)[1]
    damaged.write_bytes(before[damaged][1][:40])  # a truncated PNG, as a killed writer without atomic renames
    (out / NAMES[0]).with_suffix(".png").unlink()
    third = colorize_folder(public_resnet, sketches, out, config)
    assert (third.done, third.skipped) == (2, 1)
    assert {path: path.read_bytes() for path in outputs(out)} == {path: data for path, (_, data) in before.items()}
    record = json.loads((out / "advseg-run.json").read_text())
    assert record["counts"] == {"done": 2, "skipped": 1, "failed": 0}


def test_an_out_folder_of_another_checkpoint_or_setting_is_refused(public_resnet: Path, sketches: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    colorize_folder(public_resnet, sketches, out, ColorizeConfig(size=32, **CPU))
    with pytest.raises(IncompatibleInputError, match="size: 32 -> 64"):
        colorize_folder(public_resnet, sketches, out, ColorizeConfig(size=64, **CPU))
    with pytest.raises(IncompatibleInputError, match="test_mode"):
        colorize_folder(public_resnet, sketches, out, ColorizeConfig(size=32, test_mode="public", **CPU))
    other = save_public(tiny_generator(seed=99), tmp_path / "other_net_G.pth")
    with pytest.raises(IncompatibleInputError, match="checkpoint_sha256"):
        colorize_folder(other, sketches, out, ColorizeConfig(size=32, **CPU))
    redone = colorize_folder(other, sketches, out, ColorizeConfig(size=32, overwrite=True, **CPU))
    assert (redone.done, redone.skipped) == (3, 0)


def test_undecodable_sketches_are_reported_and_skipped(public_resnet: Path, tmp_path: Path) -> None:
    folder = write_sketches(tmp_path / "mixed", {"good.png": ("rocket", 32, 32)})
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    summary = colorize_folder(public_resnet, folder, out, ColorizeConfig(size=32, **CPU))
    assert (summary.done, summary.failed) == (1, 2)
    record = json.loads((out / "advseg-run.json").read_text())
    assert sorted(failure["input"] for failure in record["failures"]) == ["broken.png", "empty.jpg"]
    assert all(failure["reason"] for failure in record["failures"])
    assert sorted(p.name for p in out.glob("*.png")) == ["good.png"]
    (folder / "good.png").unlink()
    with pytest.raises(AllInputsFailedError, match="all 2 sketches failed"):
        colorize_folder(public_resnet, folder, tmp_path / "none", ColorizeConfig(size=32, **CPU))


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_grid_writes_sheets_and_an_index_that_links_every_one(public_resnet: Path, sketches: Path,
                                                             tmp_path: Path) -> None:
    tricky = 'r&d <1> #2 "q".png'  # characters that must be escaped in HTML and quoted in a URL
    Image.fromarray(png(sketches / "astronaut.png")).save(sketches / tricky)
    out = tmp_path / "out"
    colorize_folder(public_resnet, sketches, out, ColorizeConfig(size=32, **CPU))  # first without --grid
    summary = colorize_folder(public_resnet, sketches, out, ColorizeConfig(size=32, grid=True, **CPU))
    assert summary.done == 4 and summary.index == out / "index.html"  # no sheets yet: all redone
    names = [*NAMES, tricky]
    for name in names:
        sheet = png(out / "grid" / Path(name).with_suffix(".png"))
        result = result_of(out, name)
        assert sheet.shape == (32, 64, 3)
        assert np.array_equal(sheet[:, 32:], result)  # right: the result as written
        assert (sheet[:, :32, 0] == sheet[:, :32, 1]).all() and sheet[:, :32].std() > 10  # left: the gray sketch
    text = (out / "index.html").read_text(encoding="utf-8")
    links = _Links()
    links.feed(text)
    targets = {(out / urllib.parse.unquote(src)).resolve() for src in links.images}
    assert targets == {(out / "grid" / Path(name).with_suffix(".png")).resolve() for name in names}
    assert all(not urllib.parse.urlparse(src).scheme and not src.startswith("/") for src in links.images)
    assert tricky in "".join(links.text)  # the name shows as it is ...
    assert "<1>" not in text and "r&amp;d &lt;1&gt;" in text  # ... because it is escaped in the HTML


def test_grid_with_size_zero_shows_the_sketch_at_its_own_size(public_resnet: Path, tmp_path: Path) -> None:
    folder = write_sketches(tmp_path / "odd", {"tall.png": ("astronaut", 37, 45)})
    out = tmp_path / "out"
    colorize_folder(public_resnet, folder, out, ColorizeConfig(size=0, grid=True, **CPU))
    sheet = png(out / "grid" / "tall.png")
    assert sheet.shape == (45, 74, 3)
    assert np.array_equal(sheet[:, :37, 0], png(folder / "tall.png"))
    assert np.array_equal(sheet[:, 37:], result_of(out, "tall.png"))


def test_two_shards_fill_one_folder(public_resnet: Path, sketches: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = colorize_folder(public_resnet, sketches, out, ColorizeConfig(size=32, shard=(0, 2), grid=True, **CPU))
    second = colorize_folder(public_resnet, sketches, out, ColorizeConfig(size=32, shard=(1, 2), grid=True, **CPU))
    assert (first.done, second.done) == (2, 1)
    assert first.record != second.record and first.record.is_file() and second.record.is_file()
    assert all(path.is_file() for path in outputs(out))
    assert (out / "index.html").read_text().count("<img ") == 3  # the last shard's gallery shows all sheets
    whole = colorize_folder(public_resnet, sketches, out, ColorizeConfig(size=32, grid=True, **CPU))
    assert (whole.done, whole.skipped) == (0, 3)


def test_a_strangers_bad_sketches_are_failed_inputs_with_their_reasons(public_resnet: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file of tests/untrusted_images.py: the refused ones fail with their reason (the run goes on),
    the still images of the allowed formats are coloured."""
    import advseg_cli.colorize
    from tests.untrusted_images import ACCEPTED, LIMITS, REFUSED

    monkeypatch.setattr(advseg_cli.colorize, "SKETCH_LIMITS", LIMITS)  # the small limits of the test files
    folder = tmp_path / "strangers"
    folder.mkdir()
    for name, (make, _) in {**REFUSED, **ACCEPTED}.items():
        (folder / name).write_bytes(make())
    out = tmp_path / "out"
    summary = colorize_folder(public_resnet, folder, out, ColorizeConfig(size=32, **CPU))
    reasons = {failure["input"]: failure["reason"] for failure in json.loads((out / "advseg-run.json").read_text())
               ["failures"]}
    assert (summary.done, summary.failed) == (len(ACCEPTED), len(REFUSED)), reasons
    assert sorted(reasons) == sorted(REFUSED)
    wrong = {name: reason for name, reason in reasons.items() if REFUSED[name][1] not in reason}
    assert not wrong, wrong
    assert sorted(p.name for p in out.glob("*.png")) == sorted(str(Path(name).with_suffix(".png"))
                                                             for name in ACCEPTED)
