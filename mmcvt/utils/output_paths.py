"""Where a tool will write, checked before it starts working: an output
folder or file that cannot be written is an error at the start, naming the
path and why, not a traceback after the model has run.

Nothing is created. Whether a missing folder can be made is tried by
making and removing a folder of our own in the nearest folder that exists,
because only trying tells: ``os.access`` lets a root process pass for
folders that refuse a new entry anyway (``/proc``'s). The folder itself is
not made and removed, which would race with the other processes of a
distributed run that check it at the same moment.
"""
import os
import os.path as osp
import tempfile

from .arguments import argument_type, named


def check_output_dir(path, what='the output folder'):
    """Checks, creating nothing, that files can be written into the folder
    ``path``: it is a folder that takes new files, or it does not exist and
    the nearest folder above it that does takes new folders.

    Args:
        path (str | os.PathLike): The folder.
        what (str): What the messages call it, e.g. ``'the work dir'``;
            empty for messages that start with the path.

    Raises:
        ValueError: ``path`` is empty (the current folder is rarely meant).
        NotADirectoryError: ``path``, or a folder it would be made in, is a
            file or something else that is no folder.
        PermissionError: ``path`` cannot be made, or takes no new files,
            with the folder that refuses and the system's reason.
    """
    path = os.fspath(path)
    if not path.strip():
        raise ValueError(f'{what or "the folder"} is empty: name a folder '
                         f'to write into')
    path_named = named(what, path)
    folder, missing = osp.abspath(path), False
    while not osp.lexists(folder):
        folder, missing = osp.dirname(folder), True
    if not osp.isdir(folder):
        kind = 'a file' if osp.isfile(folder) else 'no folder'
        if not missing:
            raise NotADirectoryError(
                f'{path_named} is {kind}, not a folder: name '
                f'a folder to write into')
        raise NotADirectoryError(f'{path_named} cannot be made: {folder} is '
                                 f'{kind}, not a folder')
    try:
        if missing:
            os.rmdir(tempfile.mkdtemp(dir=folder))
        else:
            tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        refused = 'cannot be made' if missing else 'takes no new files'
        raise PermissionError(
            f'{path_named} {refused}: {folder} refuses new '
            f'{"folders" if missing else "files"} ({error.strerror}). '
            f'Name a folder that you can write into') from None


def check_output_file(path, what='the output file'):
    """Checks, creating nothing, that the file ``path`` can be written: it
    names no folder, and its folder passes :func:`check_output_dir`; a file
    that is there already must be writable.

    Args:
        path (str | os.PathLike): The file.
        what (str): What the messages call it; empty for messages that
            start with the path.

    Raises:
        ValueError: ``path`` is empty.
        IsADirectoryError: ``path`` is a folder, or ends with a separator.
        NotADirectoryError, PermissionError: See :func:`check_output_dir`,
            and a file there that is read-only.
    """
    path = os.fspath(path)
    if not path.strip():
        raise ValueError(f'{what or "the file"} is empty: name a file to '
                         f'write')
    path_named = named(what, path)
    if path.endswith(('/', os.sep)) or osp.isdir(path):
        raise IsADirectoryError(f'{path_named} is a folder: name the file to '
                                f'write')
    check_output_dir(osp.dirname(path) or '.', f'{path_named}: its folder')
    if osp.exists(path) and not os.access(path, os.W_OK):
        raise PermissionError(f'{path_named} is there and read-only: name '
                              f'another file, or make it writable')


output_dir = argument_type(
    check_output_dir, 'output_dir',
    'argparse type: a folder to write into (see check_output_dir).')
output_file = argument_type(
    check_output_file, 'output_file',
    'argparse type: a file to write (see check_output_file).')
