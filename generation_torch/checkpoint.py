"""Checkpoint files, always written atomically (temp + rename): a crash never leaves half a file.

Training checkpoints (RUN/vae_last.pt, RUN/vae_best.pt, RUN/diffusion_*.pt) hold everything --resume
needs. The product, RUN/generator.pt, holds what sampling and the ONNX exporter need (see docs/generator.md).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.atomic import write_atomic
from shared.errors import UserError

GENERATOR_FORMAT = "emsynth-generator"
TRAINING_FORMAT = "emsynth-training-state"


def save(path: Path, obj: dict[str, Any]) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load(path: Path, expect_format: str | None = None) -> dict[str, Any]:
    """A checkpoint of this project: tensors, numbers, strings, lists and dicts only. weights_only=True
    so a shared file cannot run code on load (a pickle can name any function to call)."""
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # not a refused object: the bytes are no pickle at all
            raise UserError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0][:120]})") from None
        raise UserError(f"{path}: refused, it holds {_offending(exc)} besides tensors and plain values "
                        "(loading it could run code); only checkpoints written by emsynth load") from None
    except Exception as exc:  # truncated files and foreign pickles raise many types
        raise UserError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(obj, dict) or (expect_format and obj.get("format") != expect_format):
        raise UserError(f"{path}: not an {expect_format or 'emsynth'} checkpoint")
    return obj


def _offending(exc: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler stopped at, e.g. 'GLOBAL posix.system'."""
    found = re.search(r"GLOBAL [\w.]+", str(exc))
    return found.group(0) if found else "objects"


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """load_state_dict, turning shape/key mismatches into one line that names the file."""
    mine = model.state_dict()
    missing = sorted(set(mine) - set(state))
    extra = sorted(set(state) - set(mine))
    wrong = [k for k in mine if k in state and tuple(state[k].shape) != tuple(mine[k].shape)]
    if missing or extra or wrong:
        detail = (f"{wrong[0]} is {tuple(state[wrong[0]].shape)} there, {tuple(mine[wrong[0]].shape)} here"
                  if wrong else f"{len(missing)} missing and {len(extra)} unexpected tensors")
        raise UserError(f"{path}: {what} checkpoint is from another model shape ({detail}); "
                        "use the same model flags as the run that wrote it")
    model.load_state_dict(state)


