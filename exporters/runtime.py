"""onnxruntime inference for the project's ONNX files, with numpy + onnxruntime only.

    Segmenter("segmenter.onnx").predict(slice)          -> (H, W) float32 foreground probability
    Segmenter("segmenter.onnx").segment(slice)          -> (H, W) uint8 mask at the calibrated threshold
    Generator("generator_onnx/").sample(masks, SamplerSettings(), seed)  -> (N, 256, 256) uint8 images

Provider: the CUDA execution provider (with IO binding) when its libraries load and a GPU answers,
else the CPU provider; one log line says which, and onnxruntime's own loader errors are kept quiet.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from exporters import metadata as meta
from shared import diffusion
from shared.normalization import denormalize, normalize
from shared.outputs import foreground_mask
from shared.sampling import SamplerSettings, TileNoise, tile_seeds
from shared.texture import TEXTURE_FILE, add_texture
from shared.tiling import OVERLAP, TILE, predict_box, predict_tiled, with_tta

log = logging.getLogger("emsynth.runtime")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_QUIET = 4  # onnxruntime severity FATAL: its CUDA-loader errors would otherwise flood the log


class ModelFileError(ValueError):
    """The ONNX file is missing, not ONNX, or lacks the project's metadata."""


class InputError(ValueError):
    """An array given to a model is not what it accepts (dtype, rank, NaN, empty)."""


# -- providers ----------------------------------------------------------------------------------
@functools.cache
def cuda_usable() -> bool:
    """True when onnxruntime's CUDA provider library and its CUDA/cuDNN dependencies load."""
    if CUDA not in ort.get_available_providers():
        return False
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    try:
        ctypes.CDLL(str(lib))
        ctypes.CDLL("libcuda.so.1")  # the driver: present only where a GPU is
    except OSError:
        return False
    return True


def choose_providers(device: str = "auto") -> list[str]:
    """'auto': CUDA when usable, else CPU; 'cuda' insists (error if unusable); 'cpu' forces CPU."""
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, got {device!r}")
    if device == "cuda" and not cuda_usable():
        raise RuntimeError("CUDA execution provider requested but its libraries (CUDA, cuDNN) or a GPU "
                           "are not available")
    return [CUDA, CPU] if device != "cpu" and cuda_usable() else [CPU]


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Full graph optimization; intra-op threads = physical cores unless given; quiet logging."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or 0  # 0 = onnxruntime's default (one per core)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = _QUIET
    return options


def open_session(path: str | os.PathLike, device: str = "auto", threads: int | None = None
                 ) -> tuple[ort.InferenceSession, dict[str, str]]:
    """Load an ONNX file with clear errors; returns the session and its metadata_props."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file")
    providers = choose_providers(device)
    ort.set_default_logger_severity(_QUIET)
    try:
        session = ort.InferenceSession(str(path), session_options(threads), providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"{path}: not a loadable ONNX model ({first[:200]})") from None
    finally:
        ort.set_default_logger_severity(2)
    used = session.get_providers()[0]
    log.info("%s: onnxruntime %s on %s", path.name, ort.__version__,
             "GPU (CUDA execution provider)" if used == CUDA else "CPU (CPU execution provider)")
    return session, dict(session.get_modelmeta().custom_metadata_map)


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a session; on CUDA through IO binding so outputs stay on the device until copied once."""
    if session.get_providers()[0] != CUDA:
        return session.run(None, feeds)
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


def check_metadata(path: Path, props: dict[str, str], kind: str) -> None:
    found = props.get(meta.MODEL_KIND)
    if found is None:
        raise ModelFileError(f"{path}: ONNX file has no emsynth metadata (was it made by exporters?)")
    if found != kind:
        raise ModelFileError(f"{path}: is a {found} model, expected a {kind}")
    missing = meta.missing_keys(props, kind)
    if missing:
        raise ModelFileError(f"{path}: metadata lacks {', '.join(missing)}")


# -- input validation ---------------------------------------------------------------------------
def check_slice(image: np.ndarray, what: str = "slice") -> np.ndarray:
    """A 2-D uint8/uint16/float32 slice, non-empty and finite."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 2:
        raise InputError(f"{what} must be 2-D (H, W), got shape {image.shape}")
    if image.size == 0:
        raise InputError(f"{what} is empty (shape {image.shape})")
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise InputError(f"{what} has dtype {image.dtype}; expected uint8, uint16 or float32 in [0, 1]")
    if image.dtype == np.float32:
        if not np.isfinite(image).all():
            raise InputError(f"{what} contains NaN or Inf")
        if image.min() < 0.0 or image.max() > 1.0:
            raise InputError(f"{what} is float32 but not in [0, 1] (min {image.min():.3g}, "
                             f"max {image.max():.3g})")
    return image


def check_masks(masks: np.ndarray, size: int) -> np.ndarray:
    if not isinstance(masks, np.ndarray):
        raise InputError(f"masks must be a numpy array, got {type(masks).__name__}")
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[1:] != (size, size) or masks.shape[0] == 0:
        raise InputError(f"masks must be (N, {size}, {size}) with N >= 1, got shape {masks.shape}")
    if masks.dtype.kind == "f" and not np.isfinite(masks).all():
        raise InputError("masks contain NaN or Inf")
    return (masks > 0.5 * max(float(masks.max()), 1e-12)).astype(np.float32)


# -- segmenter ----------------------------------------------------------------------------------
class Segmenter:
    """A segmenter ONNX file: whole slices of any size through overlapping, blended tiles."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None):
        self.path = Path(path)
        self.session, self.metadata = open_session(self.path, device, threads)
        check_metadata(self.path, self.metadata, "segmenter")
        self.tile = int(self.metadata["tile_size"])
        self.threshold = float(self.metadata["threshold"])
        self.input_name = self.session.get_inputs()[0].name
        self.dtype = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def predict_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """(B, T, T) normalized float32 tiles -> (B, T, T) probabilities."""
        feed = np.ascontiguousarray(tiles[..., None], dtype=self.dtype)
        return run(self.session, {self.input_name: feed})[0][..., 0].astype(np.float32)

    def settings(self, tta: bool | None = None, overlap: int | None = None) -> tuple[bool, int]:
        """(tta, overlap), each defaulting to what the threshold was calibrated with (file metadata)."""
        tta = self.metadata.get("recommended_tta", "false") == "true" if tta is None else tta
        overlap = int(self.metadata.get("recommended_overlap", OVERLAP)) if overlap is None else overlap
        return tta, overlap

    def predict(self, image: np.ndarray, tta: bool | None = None, overlap: int | None = None,
                batch_size: int = 8) -> np.ndarray:
        """Foreground probability (H, W) float32 of one slice (uint8/uint16, or float32 in [0, 1]).
        tta and overlap default to the settings the threshold was calibrated with (file metadata)."""
        x = normalize(check_slice(image))
        tta, overlap = self.settings(tta, overlap)
        return predict_tiled(self.tile_predictor(tta), x, self.tile, overlap, batch_size)

    def predict_box(self, block: np.ndarray, block_start: tuple[int, int], shape: tuple[int, int],
                    box: tuple[tuple[int, int], tuple[int, int]], tta: bool | None = None,
                    overlap: int | None = None, batch_size: int = 8) -> np.ndarray:
        """Probabilities of `box` ((y0, y1), (x0, x1)) of a `shape` slice from `block`, its pixels from
        `block_start` on: the values predict() gives on the whole slice there (shared.tiling.predict_box)."""
        x = normalize(check_slice(block, "block"))
        tta, overlap = self.settings(tta, overlap)
        return predict_box(self.tile_predictor(tta), x, block_start, shape, box, self.tile, overlap,
                           batch_size)

    def tile_predictor(self, tta: bool) -> Callable[[np.ndarray], np.ndarray]:
        return with_tta(self.predict_tiles) if tta else self.predict_tiles

    def segment(self, image: np.ndarray, tta: bool | None = None, overlap: int | None = None) -> np.ndarray:
        """Mask (H, W) uint8 0/255 at the threshold calibrated in training (stored in the file), the
        encoding and comparison of every segment command (shared.outputs)."""
        return foreground_mask(self.predict(image, tta, overlap), self.threshold)


# -- generator ----------------------------------------------------------------------------------
class Generator:
    """The generator's ONNX parts in one folder: denoiser.onnx, vae_decoder.onnx (vae_encoder.onnx
    optional). Sampling reuses shared.diffusion, the same maths as the PyTorch sampler."""

    def __init__(self, folder: str | os.PathLike, device: str = "auto", threads: int | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ModelFileError(f"{self.folder}: no such folder of generator ONNX files")
        self.denoiser, self.metadata = open_session(self.folder / "denoiser.onnx", device, threads)
        check_metadata(self.folder / "denoiser.onnx", self.metadata, "denoiser")
        self.decoder, decoder_meta = open_session(self.folder / "vae_decoder.onnx", device, threads)
        check_metadata(self.folder / "vae_decoder.onnx", decoder_meta, "vae_decoder")
        self.schedule = diffusion.Schedule.from_config(self.metadata)
        self.prediction = self.metadata["prediction"]
        self.latent_scale = float(self.metadata["latent_scale"])
        self.latent_shape = tuple(json.loads(self.metadata["latent_shape"]))
        self.tile = int(self.metadata.get("tile_size", TILE))
        self.names = [i.name for i in self.denoiser.get_inputs()]
        self.device, self.threads, self._encoder = device, threads, None  # the encoder opens when needed
        spectrum = self.folder / TEXTURE_FILE  # absent in exports of older generators
        self.texture_spectrum = np.load(spectrum, allow_pickle=False) if spectrum.is_file() else None

    def denoise(self, x: np.ndarray, cond: np.ndarray, t: int) -> np.ndarray:
        """One denoiser call: model output for latents x (B, C, h, w) at integer timestep t."""
        feeds = {self.names[0]: x.astype(np.float32), self.names[1]: cond,
                 self.names[2]: np.full(len(x), t, np.float32)}
        return run(self.denoiser, feeds)[0]

    def model_fn(self, cond: np.ndarray, guidance: float,
                 rescale: float = 0.0) -> Callable[[np.ndarray, int], np.ndarray]:
        """model(x, t) with classifier-free guidance (shared.diffusion.guided_model)."""
        null = np.zeros_like(cond)
        return diffusion.guided_model(self.denoise, cond, null, guidance, rescale, np.concatenate)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Normalized images (N, T, T) -> scaled posterior-mean latents (vae_encoder.onnx)."""
        if self._encoder is None:
            path = self.folder / "vae_encoder.onnx"
            if not path.is_file():
                raise ModelFileError(f"{path}: missing; starting from tiles (strength below 1) needs the "
                                     "VAE encoder (export the generator again)")
            self._encoder, meta = open_session(path, self.device, self.threads)
            check_metadata(path, meta, "vae_encoder")
        mean = run(self._encoder, {self._encoder.get_inputs()[0].name: images[:, None].astype(np.float32)})[0]
        return mean * np.float32(self.latent_scale)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Scaled latents -> normalized images (N, T, T) in about [-1, 1]."""
        return run(self.decoder, {self.decoder.get_inputs()[0].name:
                                  (latents / self.latent_scale).astype(np.float32)})[0][:, 0]

    def generate(self, masks: np.ndarray, settings: SamplerSettings | None = None, seed: int = 0,
                 start: int = 0, initial_noise: np.ndarray | None = None,
                 init_images: np.ndarray | None = None) -> np.ndarray:
        """Normalized images (N, T, T) in [-1, 1] drawn for binary masks (N, T, T). Image k is tile
        start + k of a request with `seed` and draws from that tile's own noise stream, as in PyTorch
        (shared.sampling): an image does not depend on how a request is cut into calls.
        initial_noise (N, C, h, w), if given, replaces the streams' first draw (x_T). With
        settings.strength below 1, image k starts from init_images[k] (normalized, (N, T, T))."""
        settings = settings or SamplerSettings()
        masks = check_masks(masks, self.tile)
        init = None
        if settings.strength < 1.0:
            if init_images is None or init_images.shape != masks.shape:
                got = "none" if init_images is None else f"{init_images.shape}"
                raise InputError(f"strength {settings.strength} starts from one tile per mask {masks.shape}, "
                                 f"got {got}")
            init = self.encode(init_images)
        if settings.texture and self.texture_spectrum is None:
            raise InputError(f"{self.folder}: no {TEXTURE_FILE} (exported from a generator trained before "
                             "the texture spectrum was measured): draw with texture 0")
        try:
            steps = settings.steps_for(self.schedule.timesteps)
            noise = TileNoise(tile_seeds(seed, start, len(masks)))
        except ValueError as exc:
            raise InputError(str(exc)) from None
        shape = (len(masks), *self.latent_shape)
        if initial_noise is not None and initial_noise.shape != shape:
            raise InputError(f"initial_noise must be {shape}, got {initial_noise.shape}")
        x_T = noise.draw(self.latent_shape) if initial_noise is None else initial_noise.astype(np.float32)
        cond = mask_condition(masks, self.latent_shape[1])
        fn = self.model_fn(cond, settings.scale, settings.guidance_rescale)
        latents = diffusion.sample(fn, x_T, self.schedule, settings.sampler, steps, eta=settings.eta,
                                   prediction=self.prediction, noise_fn=lambda a: noise.draw(a.shape[1:]),
                                   init=init, strength=settings.strength)
        return add_texture(self.decode(latents), self.texture_spectrum, settings.texture, noise)

    def sample(self, masks: np.ndarray, settings: SamplerSettings | None = None, seed: int = 0,
               start: int = 0, init_images: np.ndarray | None = None) -> np.ndarray:
        """uint8 images (N, T, T) drawn for binary masks (N, T, T); same seed, same images. init_images:
        normalized tiles to start from (settings.strength below 1)."""
        return denormalize(self.generate(masks, settings, seed, start, init_images=init_images), np.uint8)


def mask_condition(masks: np.ndarray, size: int) -> np.ndarray:
    """(N, T, T) {0,1} masks -> the denoiser's condition (N, 2, size, size): the mask area-averaged
    to latent resolution, and a presence channel of ones (the null condition is all zeros)."""
    n, t, _ = masks.shape
    f = t // size
    small = masks.reshape(n, size, f, size, f).mean(axis=(2, 4), dtype=np.float32)[:, None]
    return np.concatenate([small, np.ones_like(small)], axis=1).astype(np.float32)
