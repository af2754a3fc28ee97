"""The process around the buffers: exit, SIGTERM and fork.

- At interpreter exit every open buffer is closed, all at once, within one
  cap (``set_exit_timeout``); ``flush_on_sigterm`` makes SIGTERM such an exit.
- Around ``fork()`` every buffer is quiesced (its partition locks held), and
  in the child each starts over empty with fresh locks and threads: the
  parent's items stay the parent's.  In a child started by ``multiprocessing``
  with the fork or forkserver method, which ends with ``os._exit()`` (no
  ``atexit``), the open buffers are closed by a ``multiprocessing`` finalizer
  instead.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import sys
import time
from typing import Any

from ._lifecycle import logger
from ._options import check_seconds
from ._registry import registry
from ._text import plural

__all__ = ("close_open_buffers", "flush_on_sigterm", "get_exit_timeout", "set_exit_timeout")

# The cap on the whole flush at interpreter exit, over all buffers (seconds).
# Written by set_exit_timeout (any thread; a float store is atomic), read
# when the interpreter exits.
_exit_timeout = 30.0


def set_exit_timeout(seconds: float) -> None:
    """Set the cap on the flush of open buffers at interpreter exit.

    At exit every open buffer is closed: all of them start flushing at once,
    each batch bounded by its buffer's ``flush_timeout``, and the whole is
    bounded by this cap (default 30 seconds).  Items still buffered or in
    flight when the cap runs out are logged as lost, with the buffer's
    name, and the interpreter exits.

    Args:
        seconds: a finite number of seconds >= 0.

    Raises:
        TypeError: ``seconds`` is not a number.
        ValueError: ``seconds`` is negative, NaN or infinite.
    """
    global _exit_timeout
    _exit_timeout = check_seconds("exit timeout", seconds, zero_ok=True)


def get_exit_timeout() -> float:
    """The cap on the flush of open buffers at interpreter exit (see :func:`set_exit_timeout`)."""
    return _exit_timeout


def close_open_buffers(timeout: float | None = None) -> None:
    """Close every open buffer, flushing them all at once, within ``timeout``.

    Run at interpreter exit with the exit timeout (see
    :func:`set_exit_timeout`), and by the SIGTERM handler of
    :func:`flush_on_sigterm`.  A buffer that cannot finish in time is logged
    at ERROR with the number of items it leaves unflushed; none raises.

    Args:
        timeout: seconds for all of them together; ``None``: the exit timeout.
    """
    seconds = _exit_timeout if timeout is None else check_seconds("timeout", timeout, zero_ok=True)
    deadline = time.monotonic() + seconds
    buffers = [buf for buf in registry.open_engines() if not buf.in_own_thread()]
    # Start every close flush first, so that a slow buffer does not hold
    # the others' flushes back.
    for buf in buffers:
        try:
            buf.begin_close()
        except Exception:
            logger.exception("buffer %r: starting its close flush failed", buf.name)
    for buf in buffers:
        try:
            buf.close_blocking(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            stats = buf.stats()
            logger.error(
                "buffer %r: not flushed within %ss of closing all buffers: %s left unflushed "
                "(%d buffered, %d in flight); at exit, databuffer.set_exit_timeout() sets this cap",
                buf.name,
                seconds,
                plural(stats["size"] + stats["in_flight"], "item"),
                stats["size"],
                stats["in_flight"],
            )
        except Exception:
            logger.exception("closing buffer %r failed", buf.name)


@atexit.register
def _close_at_exit() -> None:
    close_open_buffers()


def flush_on_sigterm(exit_code: int = 128 + signal.SIGTERM) -> Any:
    """Flush every open buffer when the process receives SIGTERM.

    By default SIGTERM ends a Python process at once: no ``finally`` block
    and no ``atexit`` function runs, so buffered items are lost.  This
    installs a handler that turns SIGTERM into ``SystemExit(exit_code)`` in
    the main thread: ``finally`` blocks and ``with`` blocks unwind (releasing
    any lock the main thread held), then the interpreter exits normally and
    closes every open buffer within the exit timeout (see
    :func:`set_exit_timeout`).  The exit status is ``exit_code`` (143, as a
    shell reports a process ended by SIGTERM).  A Python handler installed
    before is called first.  A second SIGTERM while exiting is ignored.

    Call it from the main thread (Python installs signal handlers only
    there).  The handler only raises: closing buffers inside a signal
    handler could wait for a lock the interrupted code holds.

    Args:
        exit_code: the process's exit status.

    Returns:
        The previous SIGTERM handler, to restore with ``signal.signal``.

    Raises:
        ValueError: not called from the main thread.
        TypeError: ``exit_code`` is not an int.
    """
    if isinstance(exit_code, bool) or not isinstance(exit_code, int):
        raise TypeError(f"exit_code must be an int, not {type(exit_code).__name__} {exit_code!r}")
    previous = signal.getsignal(signal.SIGTERM)
    # Only the main thread touches it: Python runs signal handlers there.
    fired = False

    def on_sigterm(signum: int, frame: Any) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        if callable(previous):
            previous(signum, frame)
        logger.info("SIGTERM: exiting; open buffers are flushed at exit")
        raise SystemExit(exit_code)

    signal.signal(signal.SIGTERM, on_sigterm)
    return previous


# -- fork -----------------------------------------------------------------

# The buffers quiesced by _before_fork, in the order their locks were taken,
# and whether the cyclic GC was enabled.  Only the thread calling fork() runs
# the three hooks, one after another.
_forking: list[Any] = []
_gc_was_enabled = [False]


def _before_fork() -> None:
    _register_multiprocessing_finalizer()
    # No GC while the locks are held: a __del__ run by it could insert into
    # a partition whose (non-reentrant) lock this thread holds.
    _gc_was_enabled[0] = gc.isenabled()
    gc.disable()
    # Held until after the fork: no buffer is added or closed meanwhile.
    registry.lock.acquire()
    for buf in registry.all_engines_locked():
        try:
            buf.fork_before()
        except BaseException:
            _after_fork_in_parent()  # release what was taken so far
            raise
        _forking.append(buf)


def _after_fork_in_parent() -> None:
    while _forking:
        _forking.pop().fork_after_parent()
    registry.lock.release()
    _restore_gc()


def _restore_gc() -> None:
    if _gc_was_enabled[0]:
        gc.enable()


def _after_fork_in_child() -> None:
    registry.lock.release()  # taken by this thread in _before_fork
    dropped = []
    buffers, _forking[:] = list(_forking), []
    for buf in buffers:
        try:
            dropped.append(buf.fork_after_child())
        except Exception:
            logger.exception("buffer %r: restarting it in the forked child failed", buf.name)
    # Last: collecting, and dropping the parent's items, may run __del__
    # methods, which may use a buffer, which must be whole again by then.
    _restore_gc()
    dropped.clear()


# multiprocessing's children started by fork or forkserver end with
# os._exit(), so atexit does not run there; its finalizers do.  A child's
# finalizer comes from an after-fork hook of multiprocessing's, which each
# child runs as it starts (once the finalizers it inherited are cleared);
# the hook is registered where multiprocessing is in use: at the first
# fork, or here at import when multiprocessing came first (a spawned or
# forkserver child importing databuffer while it unpickles its task).  A
# child that imports databuffer only later, once started, gets its finalizer
# with its first buffer (Registry.on_add).
class _MultiprocessingHook:
    # Set once, by the thread that registers the after-fork hook (the
    # forking thread or the importing one, each under the import lock or
    # alone in the process).
    registered = False
    # The process whose finalizer is registered.  Written by any thread that
    # makes a buffer: two racing make two finalizers, and the second
    # close_open_buffers() finds nothing open.
    finalizer_pid = 0


_mp_hook = _MultiprocessingHook()


def _register_multiprocessing_finalizer() -> None:
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None or _MultiprocessingHook.registered:
        return
    _MultiprocessingHook.registered = True
    mp_util.register_after_fork(_mp_hook, _in_multiprocessing_child)


def _in_multiprocessing_child(hook: object = None) -> None:
    import multiprocessing.util

    _MultiprocessingHook.finalizer_pid = os.getpid()
    # Priority 100: before the finalizers of multiprocessing's own queues
    # (10), which a handle_flush may still write to.
    multiprocessing.util.Finalize(None, close_open_buffers, exitpriority=100)


def _on_new_buffer() -> None:
    """A buffer was made: in a started ``multiprocessing`` child, make sure it has its finalizer."""
    if _MultiprocessingHook.finalizer_pid == os.getpid():
        return
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.parent_process() is not None:
        _in_multiprocessing_child()


_register_multiprocessing_finalizer()
registry.on_add = _on_new_buffer


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )
