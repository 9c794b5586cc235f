"""One file fingerprint: the first 16 hex digits of a file's sha256 (what made a product: the
generator checkpoint behind synthetic tiles and ONNX files, the model behind a volume's chunks)."""

from __future__ import annotations

import hashlib
import os


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
