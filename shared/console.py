"""What the output is attached to: progress bars for a person at a terminal, one line per epoch for
logs (redirected to a file, tqdm joins every refresh onto one line with carriage returns)."""

from __future__ import annotations

import sys


def on_terminal() -> bool:
    """True when both stdout and stderr are terminals (bars go to stderr, epoch lines to stdout)."""
    return all(getattr(stream, "isatty", lambda: False)() for stream in (sys.stdout, sys.stderr))
