"""One training at a time in a work dir.

Two trainings in one work dir (the same config started twice, with other
``--cfg-options`` say) overwrite each other's dumped config, checkpoints and
``last_checkpoint``, and one dies renaming a checkpoint the other wrote. A
training holds its work dir with a lock file, ``training.lock``, that names
it: pid, host, start time and command.

- On one host the lock is an ``flock`` on that file, which the kernel
  releases when the process dies however it dies: a lock file that no live
  process holds was left by a killed run, and is taken over.
- A lock of another host (a work dir on a shared file system) cannot be
  told from its pid: its holder refreshes the file's time every
  ``HEARTBEAT_S`` seconds, and a lock not refreshed for ``STALE_AFTER_S``
  is taken over.

Tests do not take the lock: tools/test.py writes only its own timestamped
directory into the work dir, and reads checkpoints that
:class:`SafeCheckpointHook` puts in place whole, so testing the checkpoints
of a running training is safe, and common.
"""
import datetime
import errno
import json
import os
import os.path as osp
import socket
import sys
import threading
import time
from contextlib import contextmanager, suppress

from ..utils.arguments import UsageError

try:
    import fcntl
except ImportError:  # Windows: the pid and the heartbeat alone
    fcntl = None

LOCK_NAME = 'training.lock'
HEARTBEAT_S = 60
_COMMAND_CHARS = 2000  # of the command, in the lock file
STALE_AFTER_S = 5 * HEARTBEAT_S
# the variable that gives the rank of a process, by --launcher
_RANK_VARIABLES = {
    'pytorch': 'RANK',
    'slurm': 'SLURM_PROCID',
    'mpi': 'OMPI_COMM_WORLD_RANK',
}


class WorkDirInUse(UsageError, RuntimeError):
    """Another training holds the work dir."""


@contextmanager
def hold_work_dir(cfg):
    """Holds ``cfg.work_dir`` for the training run inside the ``with``.

    Only the process of rank 0 holds it, the others run as they would: of a
    distributed run, one process holds the lock. The rank is read from the
    environment of ``cfg.launcher``, as the Runner has not started the
    process group yet.

    Yields:
        str or None: A line to log when the lock of a run that is no
        longer running was taken over.

    Raises:
        WorkDirInUse: When a training that runs holds it, naming that run.
    """
    launcher = cfg.get('launcher', 'none')
    rank = int(os.environ.get(_RANK_VARIABLES.get(launcher, ''), 0) or 0)
    if rank != 0:
        yield None
        return
    os.makedirs(cfg.work_dir, exist_ok=True)
    path = osp.join(cfg.work_dir, LOCK_NAME)
    fd, taken_over = _acquire(path)
    heartbeat = _Heartbeat(path)
    heartbeat.start()
    try:
        yield taken_over
    finally:
        heartbeat.stop()
        # removed while still locked: a start that opened the file before
        # sees, once it has the lock, that the file is gone, and retries
        with suppress(FileNotFoundError):
            os.remove(path)
        os.close(fd)


def _acquire(path):
    host = socket.gethostname()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        locked = _try_lock(fd)
        holder = _read(fd)
        if locked is False or (holder and _running(holder, path, locked)):
            os.close(fd)
            raise WorkDirInUse(_in_use_message(path, holder))
        if _same_file(fd, path):
            break
        os.close(fd)  # removed by the run that held it: take the new one
    taken_over = None
    if holder:
        taken_over = (f'{osp.dirname(path)} was held by a training that is '
                      f'not running any more, which is taken over: '
                      f'{_described(holder)}')
    info = dict(
        pid=os.getpid(),
        host=host,
        started=datetime.datetime.now().isoformat(timespec='seconds'),
        command=' '.join(sys.argv)[:_COMMAND_CHARS])
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    os.fsync(fd)
    return fd, taken_over


def _try_lock(fd):
    """True when locked, False when another process holds it, None on a
    file system without locks."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return None
        raise
    return True


def _read(fd):
    text = os.pread(fd, 2 * _COMMAND_CHARS, 0).decode(errors='replace')
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:  # cut short: written by a run killed right then
        return dict(pid=None, host=None, started=None, command=text)


def _running(holder, path, locked):
    """Whether the run that wrote ``holder`` runs, for a lock file nobody
    (``locked``: True) or nobody that locks (None) holds."""
    if holder.get('host') == socket.gethostname():
        return not locked and _pid_alive(holder.get('pid'))
    if holder.get('host') is None:
        return False
    return time.time() - osp.getmtime(path) < STALE_AFTER_S


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    except (TypeError, OverflowError):
        return False
    return True


def _same_file(fd, path):
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _described(holder):
    return (f'pid {holder.get("pid")} on host {holder.get("host")}, started '
            f'{holder.get("started")} ({holder.get("command")})')


def _in_use_message(path, holder):
    work_dir = osp.dirname(path)
    holder = holder or {}
    refreshed = time.time() - osp.getmtime(path)
    remote = holder.get('host') not in (None, socket.gethostname())
    return (
        f'the work dir {work_dir} is in use by a training that is running: '
        f'{_described(holder)}. Two trainings in one work dir overwrite '
        f'each other\'s checkpoints and logs: train into another with '
        f'--work-dir, or wait for that one to end. If it is not running any '
        f'more, delete {path}' +
        (f' (it was refreshed {refreshed:.0f} s ago; a lock of another '
         f'host is taken over once it is {STALE_AFTER_S} s old)'
         if remote else '') + '.')


class _Heartbeat(threading.Thread):
    """Refreshes the lock file's time, for starts on other hosts."""

    def __init__(self, path):
        super().__init__(daemon=True, name='work-dir-lock-heartbeat')
        self.path = path
        self._stopped = threading.Event()

    def run(self):
        while not self._stopped.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a full or unreachable file system: the run goes on

    def stop(self):
        self._stopped.set()
        self.join()
