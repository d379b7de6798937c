"""`advseg experiment seg-effect --help` names every mode the experiment accepts (read from click's objects)."""

from __future__ import annotations

import re

from advseg_cli.commands.experiment import seg_effect as seg_effect_command
from advseg_cli.experiments.seg_effect import BASE_MODES, MODES


def test_the_modes_help_names_every_mode_and_the_default_is_the_presets() -> None:
    option = next(param for param in seg_effect_command.params if param.name == "modes")
    named = set(re.findall(r"[a-z]+(?:-[a-z]+)*", option.help))
    assert set(MODES) <= named, sorted(set(MODES) - named)
    assert option.show_default == ",".join(BASE_MODES)
