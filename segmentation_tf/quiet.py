"""Import TensorFlow without its start-up lines. Its C++ libraries print them (oneDNN, "Could not find
cuda drivers", CPU instructions, "failed call to cuInit" on CPU machines) through absl before
TensorFlow's logging is configured, so TF_CPP_MIN_LOG_LEVEL alone does not stop them: file
descriptor 2 is caught while the libraries load and everything but those known lines is passed on.

Every entry point calls quiet_tensorflow() before its first TensorFlow (or Keras) import; a user who
wants the lines back sets TF_CPP_MIN_LOG_LEVEL=0.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

# absl's pre-initialization banner, its I-level lines, the CPU-instruction note and cuInit on CPU
_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
                    r"|I\d{4} [\d:.]+\s+\d+ \S+:\d+\]"
                    r"|To enable the following instructions:"
                    r"|.*failed call to cuInit)")


def quiet_tensorflow() -> ModuleType:
    """Import tensorflow (once) with its start-up lines dropped; returns the module."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # later C++ logs (cuInit at device discovery)
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        import tensorflow

        return tensorflow
    with _filtered_stderr():
        import keras  # noqa: F401  (its backend set-up logs too)
        import tensorflow

        tensorflow.config.list_physical_devices()  # device discovery, where cuInit is tried
    return tensorflow


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    """Send fd 2 to a temp file for the block, then write its lines back except the known noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not _NOISE.match(line)))
            sys.stderr.flush()
