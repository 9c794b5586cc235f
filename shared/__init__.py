"""Framework-free core shared by both trainers: TIFF I/O, tiling, normalization, tile store,
z-block splits, the EM phantom and the diffusion schedule/sampler maths.

numpy + tifffile only: importing this package never imports torch or tensorflow.
"""

from shared.errors import UserError
from shared.normalization import MEAN, STD, denormalize, normalize, to_unit

__all__ = ["MEAN", "STD", "UserError", "denormalize", "normalize", "to_unit"]
