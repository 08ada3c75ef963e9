"""`python -m cloudlet` runs the CLI."""

from cloudlet.cli.entry import main

main()
