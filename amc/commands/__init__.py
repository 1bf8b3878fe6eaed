"""Subcommands of the ``amc`` CLI; see ``amc.cli``."""
