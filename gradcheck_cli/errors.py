"""The one exception type for mistakes a user can fix.

cli/app.py turns a UserError into one line on stderr and exit code 2; every other exception is a bug
in gradcheck (or in the user's model, re-raised as a UserError where we can say what to do).
"""


class UserError(Exception):
    """A mistake the user can fix. The message is one line: what, where, and how to fix it."""
