"""The ``orchestrator`` command: one typer app with a verb per module (``serve``: up, plan, export; ``gpu``: mig plan,
doctor, worker; ``status``; ``advise``: bench --profile, advise). Exit codes: 2 means the config or plan is wrong
(nothing was started), 1 means starting or running failed."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.advise import advise_command, bench_command
from orchestrator.cli.gpu import doctor_command, mig_app, worker_command
from orchestrator.cli.serve import export_command, plan_command, up_command
from orchestrator.cli.status import status_command

app = typer.Typer(
    help="Serve text-embedding models with one replica per MIG slice (or CPU pool), behind one endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: typer's rich help prints a type beside every flag (--verbose <bool>), as if it took a value.
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"mig-orchestrator {version('mig-orchestrator')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    """Serve text-embedding models with one replica per MIG slice (or CPU pool), behind one endpoint."""


app.command("plan")(plan_command)
app.command("up")(up_command)
app.command("export")(export_command)
app.add_typer(mig_app, name="mig")
app.command("doctor")(doctor_command)
app.command("worker")(worker_command)
app.command("status")(status_command)
app.command("bench")(bench_command)
app.command("advise")(advise_command)


def _register_search() -> None:
    """``orchestrator search ...`` when the search layer is installed (the ``search`` extra: its stores and UI)."""
    try:
        from search.cli import search_app
    except ImportError:  # the extra is not installed: the other commands work without it
        return
    app.add_typer(search_app, name="search", help="Index files and search them through the service (search extra).")


_register_search()


def main() -> None:
    """Console-script entry point."""
    app()
