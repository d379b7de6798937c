"""Complete help: read from click's own objects, so a new command or option is checked the day it is added."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from advseg_cli.cli import main
from advseg_cli.models.advseg import MODELS, model_config

REPO = Path(__file__).resolve().parents[1]


def every_command(command: click.Command = main, path: tuple[str, ...] = ("advseg",)
                  ) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from every_command(sub, (*path, name))


def every_option() -> Iterator[tuple[str, click.Option]]:
    for path, command in every_command():
        for parameter in command.params:
            if isinstance(parameter, click.Option) and not parameter.hidden:
                yield f"{' '.join(path)} {parameter.opts[0]}", parameter


def rendered_help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(main, [*path[1:], "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_option_of_every_command_says_what_it_does() -> None:
    missing = [name for name, option in every_option() if not (option.help or "").strip()]
    assert not missing, f"options without a description: {missing}"


def test_defaults_are_shown_in_one_style() -> None:
    """click's "[default: ...]" only: no default written by hand into a help text."""
    handwritten = [name for name, option in every_option()
                   if re.search(r"\[default|\[[^\]]*\]\.?\s*$", option.help or "")]
    assert not handwritten, f"defaults written by hand into the help text: {handwritten}"
    for path, _ in every_command():
        text = rendered_help(path)
        long_floats = re.findall(r"default: -?\d+\.\d{7,}", text)
        assert not long_floats, f"{' '.join(path)}: unreadable defaults {long_floats}"


def test_no_command_summary_is_cut_short() -> None:
    for path, command in every_command():
        if not isinstance(command, click.Group):
            continue
        text = "".join(rendered_help(path).split("Commands:", 1)[1].split())  # wrapping moves only whitespace
        assert "..." not in text, f"{' '.join(path)} --help abbreviates a summary"
        for name, sub in command.commands.items():
            first_paragraph = "".join((sub.help or "").strip().split("\n\n")[0].split())
            assert ("".join((sub.short_help or "").split()) or first_paragraph) in text, f"{' '.join(path)} --help cuts {name}'s summary"


def test_make_help_prints_real_paths() -> None:
    text = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "$(" not in text
    assert "Create .venv " in text


@pytest.mark.parametrize("model", list(MODELS))
def test_dry_run_prints_every_field_of_the_resolved_model_configuration(tmp_path: Path, model: str) -> None:
    (tmp_path / "trainA").mkdir()
    (tmp_path / "trainB").mkdir()
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--name", "x", "--model", model, "--ngf", "8", "--dry-run"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)["model_config"]
    expected = dataclasses.asdict(model_config(model, ngf=8))
    assert printed == expected
    assert not (tmp_path / "runs").exists() and not Path("runs/x").exists()
