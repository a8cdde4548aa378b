"""``python -m crosspatch.cli``: the same command as ``crosspatch``."""

from . import main

main()
