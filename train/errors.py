"""Exit codes, and the one place where a user's mistake becomes one readable message instead of a traceback.

Every error a user can cause and fix (a bad recipe, bad data, a missing file or asset, a plan that cannot work) is a
`UserError`: its message names the key, file or line and says how to fix it. `describe` turns it (and a diverged
loss) into (exit code, message); train/sft.py and `python -m launch` both use it. `leave` ends a training process with
its exit code.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Tuple

EXIT_OK = 0
EXIT_USER_ERROR = 2  # a mistake in the recipe, the data or the command; the message says what to fix
EXIT_DIVERGED = 3  # the loss became NaN/inf; the last good checkpoint is kept
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after saving a checkpoint; run again and it resumes


class UserError(Exception):
    """A mistake the user can fix. The message names the key, file or line and the fix."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stops without saving that step."""


def describe(error: BaseException) -> Optional[Tuple[int, str]]:
    """(exit code, one-line message) for the errors a run ends with on purpose; None for a bug (let it raise)."""
    if isinstance(error, TrainingDiverged):
        return EXIT_DIVERGED, f"error: {error}"
    if isinstance(error, (UserError, FileNotFoundError, FileExistsError)):
        return EXIT_USER_ERROR, f"error: {error}"
    return None


def leave(code: int, wait_for_peers: bool = False) -> int:
    """The exit code, returned; in a process that holds a process group, the process ends here with it.

    Python's interpreter teardown is skipped there (os._exit after everything a normal exit runs first: non-daemon
    threads joined, atexit handlers such as W&B's finish and logging's flush, stdout/stderr flushed). The teardown
    is what aborted ZeRO-3 ranks after complete runs: a gloo worker thread that frees a finished collective's tensor
    needs the GIL, and once the interpreter is finalizing, Python ends a thread asking for it with pthread_exit, which
    in that C++ frame is std::terminate ("terminate called without an active exception", SIGABRT, exit -6; seen in a
    core dump of rank 1). destroy_process_group() does not stop those threads while DeepSpeed still references the
    groups (every ZeRO-3 parameter does). `wait_for_peers`: a barrier first, so no rank leaves while a peer may still
    run a collective with it; not after an error, where a peer may never reach it."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return code
    import atexit
    import threading

    if wait_for_peers:
        dist.barrier()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
