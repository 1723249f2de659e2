"""How every command of ``jobs/`` ends: the Unix way, never with a traceback for something the user did.

- A closed pipe (``status.py | head``) ends the command quietly, with 141 (128 + SIGPIPE, what a C tool
  killed by SIGPIPE returns).
- Ctrl-C ends it with one line on stderr and 130 (128 + SIGINT); a command that knows more (the submitter
  that was only watching a run) says so in its own line first.
- A command started with SIGINT ignored (from a script with ``&``: a shell without job control ignores SIGINT
  in what it starts in the background) takes SIGINT back, so the jobs it starts do not inherit the ignore:
  ``jobs/cancel.py`` stops a local job with SIGINT (what submitit's own cancel sends), and a job that
  ignores it would run on.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, NoReturn


def run_command(main: Callable[[], int]) -> NoReturn:
    """Runs ``main`` and exits with its code."""
    take_back_sigint()
    try:
        code = main()
        sys.stdout.flush()  # a closed pipe shows here at the latest
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        _silence_stdout()
        code = 141
    sys.exit(code)


def take_back_sigint() -> None:
    """Python's own Ctrl-C handler where SIGINT came in ignored: a handled signal is reset to its default in
    every program this process starts, an ignored one stays ignored there."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _silence_stdout() -> None:
    """Python flushes stdout once more at exit, which would raise again on the closed pipe: point it at
    /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
