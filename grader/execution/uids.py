"""Unprivileged uids for kernels: one per live kernel on this machine, and what they leave.

As root, every kernel runs as its own uid from `UID_BASE..`, so one learner's RLIMIT_NPROC
cannot starve a concurrent kernel and "every process of that uid" is exactly what teardown
must kill. A uid is held with an flock on `LOCK_DIR/<uid>`, which several harnesses on one
machine respect; a kernel's work dir is `/tmp/mbgd-<uid>-*`, so a dir whose uid nobody holds
is known to be stale.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
from pathlib import Path

import psutil

UID_BASE = 200_000
UID_SLOTS = 50_000
LOCK_DIR = Path(tempfile.gettempdir()) / "mbgd-uid-locks"


class UidLease:
    """An unprivileged uid used by exactly one live kernel on this machine (flock-guarded)."""

    def __init__(self) -> None:
        import fcntl  # POSIX only: imported where a lease is taken (as root under bwrap)

        LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        start = secrets.randbelow(UID_SLOTS)
        for step in range(UID_SLOTS):
            uid = UID_BASE + (start + step) % UID_SLOTS
            fd = os.open(LOCK_DIR / str(uid), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if not _uid_has_processes(uid):
                self.uid, self._fd = uid, fd
                return
            os.close(fd)
        raise RuntimeError("no free sandbox uid")

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_swept = threading.Event()


def sweep_stale_workdirs(force: bool = False) -> list[Path]:
    """Delete `/tmp/mbgd-<uid>-*` work dirs whose uid nobody holds (a harness killed hard).

    Once per process unless forced. Safe against concurrent harnesses: a dir is removed only
    while we hold its uid's lease lock, and a live kernel's owner holds that lock throughout.
    """
    if _swept.is_set() and not force:
        return []
    _swept.set()
    import fcntl  # POSIX only, as in UidLease

    removed = []
    for path in Path("/tmp").glob("mbgd-[0-9]*-*"):
        uid = path.name.split("-")[1]
        if not uid.isdigit() or not UID_BASE <= int(uid) < UID_BASE + UID_SLOTS:
            continue
        lock = LOCK_DIR / uid
        try:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not _uid_has_processes(int(uid)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        except BlockingIOError:
            pass  # a live kernel's
        finally:
            os.close(fd)
    return removed


def _uid_has_processes(uid: int) -> bool:
    return bool(processes_of_uid(uid))


def processes_of_uid(uid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info.get("uids")
        if uids is not None and uid in (uids.real, uids.effective):
            found.append(proc)
    return found
