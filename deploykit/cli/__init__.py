"""The command line: the typer app (``commands``), its error and exit-code plumbing (``support``).

``deploykit.cli.main`` is the console script's entry point; typer is imported only when it runs.
"""


def main(argv: "list[str] | None" = None) -> None:
    """Run the ``deploykit`` command with ``argv`` (default: ``sys.argv[1:]``); exits with its code."""
    from deploykit.cli.commands import main as run

    run(argv)
