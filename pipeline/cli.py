"""How every command of ``jobs/`` ends: the Unix way, never with a traceback for something the user did.

- A closed pipe (``status.py | head``) ends the command quietly, with 141 (128 + SIGPIPE, what a C tool
  killed by SIGPIPE returns).
- Ctrl-C ends it with one line on stderr and 130 (128 + SIGINT); a command that knows more (the submitter
  that was only watching a run) says so in its own line first.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn


def run_command(main: Callable[[], int]) -> NoReturn:
    """Runs ``main`` and exits with its code."""
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


def _silence_stdout() -> None:
    """Python flushes stdout once more at exit, which would raise again on the closed pipe: point it at
    /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
