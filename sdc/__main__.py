"""`python -m sdc` runs the CLI."""

from sdc.compile.cli import main

main()
