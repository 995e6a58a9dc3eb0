"""Errors a user can act on, shared by every layer's command (the CLI prints them and exits 2)."""
from __future__ import annotations


class UserError(Exception):
    """An error the user can act on: the message names the input, what is wrong and the fix."""
