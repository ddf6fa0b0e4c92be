"""argparse types made from checks, so that a tool refuses a bad argument
with a usage error, before it does any work."""
import argparse
import os
import sys


def argument_type(check, name, doc):
    """An argparse type that runs ``check(text, what='')`` on the argument
    and turns the ValueError or OSError it raises into a usage error:
    argparse prints the message, and the usage, without a traceback.

    Args:
        check (Callable): Raises on a bad argument; ``what=''`` asks for
            messages that start with the argument itself, as argparse puts
            the option's name before them.
        name (str): The type's name, which argparse shows in its messages.
        doc (str): Its docstring.
    """

    def checked(text):
        try:
            check(text, what='')
        except (ValueError, OSError) as error:
            raise argparse.ArgumentTypeError(str(error))
        return text

    checked.__name__ = checked.__qualname__ = name
    checked.__doc__ = doc
    return checked


def named(what, path):
    """How a check's message names the path: ``what`` before it, if any."""
    return f'{what} {path}' if what else str(path)


class UsageError(Exception):
    """What a user gave that a tool finds wrong only once it has read the
    config: its data paths, the checkpoint to resume from or to test, a
    work dir that another run holds. Each is raised as a subclass of this
    and of the built-in error it is (FileNotFoundError, RuntimeError...), so
    that code catching those still does; :func:`run_tool` prints it as
    argparse prints a bad argument."""


def run_tool(main):
    """Runs a tool's ``main()`` and returns what it returns; a
    :class:`UsageError` ends it with ``TOOL: error: MESSAGE`` on stderr and
    exit status 2, argparse's for a bad argument, where a traceback would
    bury the message."""
    try:
        return main()
    except UsageError as error:
        print(
            f'{os.path.basename(sys.argv[0])}: error: {error}',
            file=sys.stderr)
        sys.exit(2)
