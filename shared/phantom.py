"""A procedural EM phantom with exact masks: the embedded default data of every entry point.

Each slice: cytoplasm texture, cells outlined by dark membranes (a Voronoi tessellation),
mitochondria as textured ellipses with a double membrane and cristae (the mask), vesicles,
uneven illumination, blur and noise. Seeded: the same seed gives the same stack.

    python -m shared.phantom --out DIR --slices N
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import ArgumentParser, UserError, positive_int, run_cli
from shared.tiff_io import write_stack

IMAGES_NAME = "phantom_images.tif"
MASKS_NAME = "phantom_masks.tif"


@dataclass(frozen=True)
class PhantomConfig:
    height: int = 768
    width: int = 1024
    cell_size: float = 120.0          # mean cell diameter in pixels
    mitochondria_per_mpx: float = 30.0
    vesicles_per_mpx: float = 140.0
    blur_sigma: float = 1.1
    noise_std: float = 0.045


def phantom_stack(n_slices: int, seed: int = 0, config: PhantomConfig = PhantomConfig()
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(Z, H, W) uint8 images and (Z, H, W) uint8 {0, 1} mitochondria masks."""
    rng = np.random.default_rng(seed)
    pairs = [phantom_slice(rng, config) for _ in range(n_slices)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def phantom_slice(rng: np.random.Generator, config: PhantomConfig = PhantomConfig()
                  ) -> tuple[np.ndarray, np.ndarray]:
    h, w = config.height, config.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = 0.62 + 0.05 * _smooth_noise(rng, (h, w), 6.0) + 0.03 * _smooth_noise(rng, (h, w), 1.5)
    image -= 0.33 * _cell_membranes(rng, yy, xx, config.cell_size)
    mask = np.zeros((h, w), np.uint8)
    n_mito = rng.poisson(config.mitochondria_per_mpx * h * w / 1e6)
    for _ in range(n_mito):
        _draw_mitochondrion(rng, image, mask, yy, xx)
    for _ in range(rng.poisson(config.vesicles_per_mpx * h * w / 1e6)):
        _draw_vesicle(rng, image, mask, yy, xx)
    image *= 1.0 + 0.18 * _illumination(rng, yy / h, xx / w)
    image = gaussian_blur(image, config.blur_sigma)
    image += rng.normal(0.0, config.noise_std, image.shape).astype(np.float32)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8), mask


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur through the FFT (periodic borders are fine for a phantom)."""
    if sigma <= 0:
        return image
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.rfftfreq(image.shape[1])[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    return np.fft.irfft2(np.fft.rfft2(image) * transfer, s=image.shape).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = gaussian_blur(rng.normal(0.0, 1.0, shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-8)


def _cell_membranes(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cell: float) -> np.ndarray:
    """Soft membrane strength in [0, 1] where the two nearest Voronoi seeds are equidistant."""
    h, w = yy.shape
    n = max(2, int(h * w / cell**2))
    seeds = rng.uniform([0, 0], [h, w], size=(n, 2)).astype(np.float32)
    d = np.sqrt((yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2)
    two = np.partition(d, 1, axis=0)[:2]
    gap = two[1] - two[0]
    return np.exp(-(gap / 2.2) ** 2)


def _draw_mitochondrion(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray,
                        yy: np.ndarray, xx: np.ndarray) -> None:
    h, w = image.shape
    a, b = rng.uniform(28, 75), rng.uniform(14, 30)  # semi-axes (long, short)
    cy, cx, angle = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, np.pi)
    r = int(a) + 6
    y0, y1, x0, x1 = max(0, int(cy) - r), min(h, int(cy) + r), max(0, int(cx) - r), min(w, int(cx) + r)
    if y1 <= y0 or x1 <= x0:
        return
    dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)   # along the long axis
    v = -dx * np.sin(angle) + dy * np.cos(angle)  # across it
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    inside = rho <= 1.0
    if (mask[y0:y1, x0:x1][rho <= 1.25]).any():  # keep mitochondria apart
        return
    period = rng.uniform(7, 12)
    cristae = 0.5 + 0.5 * np.cos(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
    cristae *= np.clip((1.0 - rho) * 4, 0, 1)  # fade out near the membrane
    interior = rng.uniform(0.38, 0.48) - 0.12 * cristae
    edge = np.abs(rho - 0.97) * b                  # distance to the outer membrane, in pixels
    membrane = np.exp(-(edge / 1.3) ** 2)
    patch = image[y0:y1, x0:x1]
    patch[inside] = interior[inside]
    patch -= 0.22 * membrane
    mask[y0:y1, x0:x1][inside] = 1


def _draw_vesicle(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray,
                  yy: np.ndarray, xx: np.ndarray) -> None:
    h, w = image.shape
    radius = rng.uniform(3.5, 9.0)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    r = int(radius) + 4
    y0, y1, x0, x1 = max(0, int(cy) - r), min(h, int(cy) + r), max(0, int(cx) - r), min(w, int(cx) + r)
    if y1 <= y0 or x1 <= x0 or mask[y0:y1, x0:x1].any():
        return
    d = np.sqrt((yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2)
    patch = image[y0:y1, x0:x1]
    patch[d < radius] = 0.72
    patch -= 0.3 * np.exp(-((d - radius) / 1.1) ** 2)


def _illumination(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    gy, gx, c = rng.uniform(-1, 1, 3)
    return gy * (y - 0.5) + gx * (x - 0.5) + 0.5 * c * np.cos(np.pi * x) * np.cos(np.pi * y)


def write_phantom(out: Path, n_slices: int, seed: int = 0, config: PhantomConfig = PhantomConfig()
                  ) -> tuple[Path, Path]:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if not out.parent.exists():
        raise UserError(f"{out.parent}: output folder does not exist")
    out.mkdir(exist_ok=True)
    images, masks = phantom_stack(n_slices, seed, config)
    write_stack(out / IMAGES_NAME, images)
    write_stack(out / MASKS_NAME, masks)
    return out / IMAGES_NAME, out / MASKS_NAME


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m shared.phantom", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--slices", type=positive_int, default=12, help="number of slices (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=positive_int, default=768)
    parser.add_argument("--width", type=positive_int, default=1024)
    args = parser.parse_args(argv)
    config = PhantomConfig(height=args.height, width=args.width)
    images, masks = write_phantom(args.out, args.slices, args.seed, config)
    print(f"wrote {images} and {masks} ({args.slices} slices of {args.width}x{args.height})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
