"""``python -m crosspatch``: the same command line as ``crosspatch``."""

from .cli import main

main()
