"""Export the generator's parts to ONNX: VAE encoder, VAE decoder and the mask-conditioned denoiser.

    python -m exporters.torch_onnx --checkpoint RUN/generator.pt --out DIR

Writes DIR/vae_encoder.onnx (image -> mean, logvar), DIR/vae_decoder.onnx (latent -> image) and
DIR/denoiser.onnx (x_t, cond, t -> prediction), each with a dynamic batch, opset 18, the schedule,
prediction type, latent scale and shape, condition layout and normalization in metadata_props, and
checked against PyTorch (max abs difference <= 1e-4) before the atomic write.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters.onnx_io import finalize, save_atomic
from shared import diffusion, normalization
from shared.atomic import write_atomic
from shared.digest import file_digest
from shared.errors import ArgumentParser, UserError, run_cli
from shared.texture import TEXTURE_FILE
from shared.tiling import TILE

OPSET = 18
PARITY_TOLERANCE = 1e-4


class EncoderPart(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(image)


class DecoderPart(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.decoder = vae.decoder

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent).clamp(-1.0, 1.0)


def generator_metadata(saved: dict) -> dict[str, object]:
    d = saved["diffusion"]
    return {
        **diffusion.Schedule.from_config(d).to_config(), "prediction": d["prediction"],
        "latent_scale": float(saved["latent_scale"]), "latent_shape": list(saved["latent_shape"]),
        "latent_note": "denoiser works on latents * latent_scale; divide by latent_scale before the decoder",
        "condition": saved["condition"], "tile_size": int(saved.get("tile_size", TILE)),
        **normalization.metadata(),
    }


def export_part(module: nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str],
                output_names: list[str]):
    """torch.onnx (dynamo exporter) with a dynamic batch on every input."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = {name: {0: batch} for name in input_names}
    program = torch.onnx.export(module.eval(), args, dynamo=True, opset_version=OPSET,
                                input_names=input_names, output_names=output_names,
                                dynamic_shapes=dynamic, verbose=False, optimize=True)
    return program.model_proto


def parity(module: nn.Module, proto, args: tuple[torch.Tensor, ...], names: list[str]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = module(*args)
    want = want if isinstance(want, tuple) else (want,)
    got = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})
    return max(float(np.abs(w.numpy() - g).max()) for w, g in zip(want, got, strict=True))


def example_inputs(saved: dict, batch: int = 2, seed: int = 0) -> dict[str, tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    c, h, w = saved["latent_shape"]
    tile = int(saved.get("tile_size", TILE))
    mask = (torch.rand(batch, 1, h, w, generator=g) > 0.5).float()
    cond = torch.cat([mask, torch.ones_like(mask)], dim=1)
    return {
        "vae_encoder": (torch.rand(batch, 1, tile, tile, generator=g) * 2 - 1,),
        "vae_decoder": (torch.randn(batch, c, h, w, generator=g),),
        "denoiser": (torch.randn(batch, c, h, w, generator=g), cond,
                     torch.randint(0, int(saved["diffusion"]["timesteps"]), (batch,), generator=g).float()),
    }


def quiet_exporter() -> None:
    """torch.onnx logs a line per optional torchvision op and deprecation notices: not for users."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
    warnings.filterwarnings("ignore", message=".*axis name.*")


def save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a handle: np.save would append ".npy" to the temporary name
        np.save(fh, array, allow_pickle=False)


def export_generator(checkpoint: Path, out: Path) -> dict[str, float]:
    from generation_torch import checkpoint as ckpt
    from generation_torch.pipeline import load_generator

    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: output folder does not exist")
    saved = ckpt.load(checkpoint, ckpt.GENERATOR_FORMAT)
    gen = load_generator(checkpoint)
    props = {**generator_metadata(saved), "source_checkpoint_sha256_16": file_digest(checkpoint)}
    parts = {
        "vae_encoder": (EncoderPart(gen.vae), ["image"], ["mean", "logvar"]),
        "vae_decoder": (DecoderPart(gen.vae), ["latent"], ["image"]),
        "denoiser": (gen.unet, ["x_t", "cond", "t"], ["prediction"]),
    }
    inputs = example_inputs(saved)
    quiet_exporter()
    protos, diffs = {}, {}
    for name, (module, ins, outs) in parts.items():
        proto = export_part(module, inputs[name], ins, outs)
        finalize(proto, name, props)
        diffs[name] = parity(module, proto, example_inputs(saved, batch=3, seed=1)[name], ins)
        if diffs[name] > PARITY_TOLERANCE:
            raise RuntimeError(f"{name}: ONNX differs from PyTorch by {diffs[name]:.2e}")
        protos[name] = proto
    out.mkdir(exist_ok=True)
    for name, proto in protos.items():  # written only once every part passed its parity check
        save_atomic(proto, out / f"{name}.onnx")
    spectrum = out / TEXTURE_FILE
    if gen.texture_spectrum is not None:  # the decoder's residual power (shared.texture), for --texture
        write_atomic(spectrum, lambda tmp: save_npy(tmp, gen.texture_spectrum))
    elif spectrum.exists():
        spectrum.unlink()  # a stale one from another checkpoint
    return diffs


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m exporters.torch_onnx", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="RUN/generator.pt")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the ONNX parts")
    args = parser.parse_args(argv)
    diffs = export_generator(args.checkpoint, args.out)
    for name, diff in diffs.items():
        print(f"wrote {args.out / (name + '.onnx')} (opset {OPSET}, "
              f"max |PyTorch - onnxruntime| = {diff:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
