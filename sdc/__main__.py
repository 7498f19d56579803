"""`python -m sdc` runs the CLI."""

from sdc.cli import main

main()
