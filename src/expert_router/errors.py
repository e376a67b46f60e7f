"""Errors a user can act on: the CLI prints their message and exits non-zero, without a traceback."""


class UserError(Exception):
    """Bad input or a bad environment, described so that the user knows what to change."""
