"""The base class of every error a user fixes by changing an input: a path, a name, a flag, a
record or a saved file. Each such error's message names the problem and the fix, so the command
line prints it as one line and exits with status 2 (`__main__.py`); `--debug` shows the traceback.

What it does not do: catch anything. Errors of other classes are bugs and keep their traceback.
"""


class UsageError(Exception):
    """Raised for bad input; subclasses also derive from the builtin type callers expect."""
