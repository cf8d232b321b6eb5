"""The launcher's training processes die with it.

`run_child` starts a command whose process the kernel kills (SIGKILL) as soon as the thread that started
it ends: Linux's PR_SET_PDEATHSIG, set between fork and exec, so `kill -9` on the launcher stops its runs
too (they resume from their last checkpoint next time). `stop_children_on_signals` makes SIGTERM, SIGINT
and SIGHUP end the launcher at once, killing its runs first, with the shell's status 128 + signal:
run_table.sh writes no table after that.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading

_PR_SET_PDEATHSIG = 1
_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


def _die_with_parent_fn():
    """A preexec_fn giving the child SIGKILL when its parent thread ends (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child only calls it
    parent = os.getpid()

    def set_pdeathsig():
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)

    return set_pdeathsig


def run_child(cmd: list[str], log, **popen_kwargs) -> int:
    """Run `cmd` with stdout and stderr to the open file `log`; its exit status (a signal: 128 + signal)."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent_fn(),
                            **popen_kwargs)
    with _live_lock:
        _live.add(proc)
    try:
        code = proc.wait()
    finally:
        with _live_lock:
            _live.discard(proc)
    return 128 - code if code < 0 else code


def _stop(signum, frame):
    with _live_lock:
        for proc in _live:
            try:
                proc.kill()
            except OSError:
                pass
    sys.stderr.write(f"\nstopped by signal {signum}: its runs were killed; run again to resume them\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def stop_children_on_signals() -> None:
    """Install the handlers (main thread only)."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop)
