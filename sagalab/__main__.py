"""`python -m sagalab`: the same as the `sagalab` command."""

from sagalab.cli.main import main

main()
