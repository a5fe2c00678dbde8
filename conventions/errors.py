"""Domain errors that a user can act on.

Everything raised from here carries a one-line message meant for the person who sent the
input. The command line prints it and exits non-zero; the gateway maps it to a 4xx problem
response (``service/errors.py``); the worker records it as the job's failure message.
"""


class RiirError(Exception):
    """Base class of errors caused by what the user asked for (never a bug of ours)."""


class InputError(RiirError):
    """An input image, label map or parameter is unreadable, malformed or out of bounds."""


class ModelNotFoundError(RiirError):
    """A model name or checkpoint path does not resolve to a usable checkpoint."""
