"""The one kind of error a command reports as a single `error:` line: input it cannot use.

Each module's own errors (a bad checkpoint, an unknown backend, a quantization the model cannot have)
derive from UserError, so cli.run_command can tell them from bugs without importing their modules.
"""


class UserError(Exception):
    """Bad input from the user, or a file that cannot be used. The message is one line that says what
    and where; the command exits with status 2."""
