"""The ``osqueue`` command line.

Each command lives in the module of its subsystem and registers itself here through a
``register(app)`` function, so this file only assembles them.
"""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="osqueue",
    help="A job queue whose whole state is one JSON object on object storage, changed only "
    "by compare-and-swap.",
    no_args_is_help=True,
    add_completion=False,
)

# Modules that define a register(app) function adding their commands.
COMMAND_MODULES = (
    "osqueue.conformance.cli",
    "osqueue.checker.cli",
    "osqueue.sim.cli",
    "osqueue.broker.cli",
    "osqueue.client_cli",
)


@app.callback()
def configure(
    log_level: str = typer.Option(
        "WARNING", "--log-level", help="Logging level: DEBUG, INFO, WARNING or ERROR."
    ),
) -> None:
    """Set up logging for every command."""

    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise typer.BadParameter(
            f"unknown log level {log_level!r}; use DEBUG, INFO, WARNING or ERROR",
            param_hint="--log-level",
        )
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _register_commands() -> None:
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        module.register(app)


_register_commands()


def main() -> None:
    app()
