"""`python -m fraudmon.cli`: the `fraudmon` command."""

from fraudmon.cli import main

main()
