"""The one exception type for bad user input (config or data)."""


class InputError(ValueError):
    """Bad user input: the message names the file/field/value, the problem and the fix.

    Raised before any training starts; the CLI maps it to exit status 2.
    """
