"""The ``nullspend`` command line. Other packages add commands through the ``nullspend.cli``
entry-point group: each entry point names a ``register(app: typer.Typer) -> None`` function."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer

from nullspend.cli import cost_command, models_command

ENTRY_POINT_GROUP = "nullspend.cli"

app = typer.Typer(
    name="nullspend",
    help="NullSpend: exact cost accounting and budget enforcement for AI agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("cost")(cost_command.cost)
app.command("models")(models_command.models)


def load_plugins(target: typer.Typer) -> None:
    """Let installed packages (``nullspend-server``, ...) add their commands."""
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            register = entry_point.load()
            register(target)
        except Exception as error:  # a broken plugin must not take the core commands down
            print(
                f"warning: cannot load nullspend plugin {entry_point.name!r}: {error}",
                file=sys.stderr,
            )


def main() -> None:
    load_plugins(app)
    app()
