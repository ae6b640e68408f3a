"""The command line (`pneumo-desktop`): dispatch.py is the entry point and the table of subcommands,
common.py the plumbing every command shares, scoring.py and site.py the two command groups."""

from .dispatch import main

__all__ = ["main"]
