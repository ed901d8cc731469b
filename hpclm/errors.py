"""The one exception type for bad user input: reported as a single clear line, exit code 2."""


class UserError(Exception):
    """Bad input (config, data file, checkpoint, layout). The CLI prints the message, no traceback."""
