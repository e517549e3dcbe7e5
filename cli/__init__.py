"""The `flask` commands, grouped as the README's CLI table groups them."""

from cli.commands import register

__all__ = ["register"]
