"""Help pages that never cut a sentence short.

click abbreviates each sub-command's summary to what fits one line and ends it with "..." (or at the first
abbreviation's full stop: "(e.g."), which hid what several commands do. Our groups list the whole first
paragraph of each command's docstring instead, wrapped under its name.
"""

from __future__ import annotations

import inspect

import click


def summary_of(command: click.Command) -> str:
    """The command's short_help, else the first paragraph of its help, on one line."""
    if command.short_help:
        return command.short_help
    text = inspect.cleandoc(command.help or "")
    return " ".join(text.split("\n\n")[0].split())


class FullSummaryGroup(click.Group):
    """A click group whose command list shows every command's whole summary."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, summary_of(command)) for name in self.list_commands(ctx)
                if (command := self.get_command(ctx, name)) is not None and not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
