"""``python -m deploykit.cli``: the same command as the ``deploykit`` script."""
from deploykit.cli import main

main()
