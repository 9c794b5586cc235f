"""Package the segmenter as a bioimage.io model (format 0.5): Fiji/deepImageJ, ilastik, napari and
bioimageio.core run it without this project.

    python -m exporters.bioimageio --model RUN_OR_ONNX --out DIR_OR_ZIP [--name NAME --authors "A; B"
        --license CC-BY-4.0 --pixel-size-nm 5 --sample STACK.tif]

RUN (a segmenter run folder or .keras file) is exported with exporters.keras_onnx (parity-checked);
an existing segmenter.onnx must carry the project's metadata. Everything in the description comes
from that metadata: axes as the graph has them (batch, y, x, channel), the normalization as the
spec's scale_linear, the tiling as shape min + step and output halo, the threshold. Test tensors and
the cover are one real tile (the run's validation split, or the middle slice of --sample) through the
ONNX model itself. The package is staged beside OUT and renamed into place: no half-written package.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from shared import normalization
from shared.errors import ArgumentParser, UserError, positive_float, run_cli
from shared.outputs import foreground_mask

ONNX_NAME = "segmenter.onnx"
INPUT_ID, OUTPUT_ID = "raw", "probability"
# The data set the project is built for (README: the real EPFL CA1 data); --cite replaces it.
EPFL_CITATION = ("Lucchi A., Smith K., Achanta R., Knott G., Fua P. (2012). Supervoxel-based segmentation "
                 "of mitochondria in EM image stacks with learned shape features. IEEE TMI 31(2). "
                 "EPFL CVLab Electron Microscopy Dataset (CA1 hippocampus, 5x5x5 nm).")
EPFL_DOI = "10.1109/TMI.2011.2171705"


# -- inputs: the run, checked before anything heavy is imported --------------------------------------
def check_paths(model: Path, out: Path) -> None:
    if out.exists():
        raise UserError(f"{out}: already exists (choose a new folder or .zip)")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: output folder does not exist")
    if model.suffix == ".onnx" and not model.is_file():
        raise UserError(f"{model}: no such ONNX file")
    if model.suffix != ".onnx":
        from segmentation_tf.sidecar import read_sidecar  # no TensorFlow: checks model + sidecar exist

        read_sidecar(model)


def onnx_into(model: Path, target: Path) -> dict[str, str]:
    """The segmenter ONNX file at `target` (exported from a run, or copied) and its metadata_props."""
    from exporters import metadata as meta
    from exporters.onnx_io import read_metadata

    if model.suffix == ".onnx":
        try:
            props = read_metadata(model)
        except Exception as exc:  # onnx raises DecodeError & co for files that are not ONNX
            raise UserError(f"{model}: not an ONNX model ({str(exc)[:120]})") from None
        shutil.copyfile(model, target)
    else:
        from exporters.keras_onnx import export_segmenter

        export_segmenter(model, target)  # raises if ONNX and Keras disagree beyond 1e-4
        props = read_metadata(target)
    if props.get(meta.MODEL_KIND) != "segmenter" or meta.missing_keys(props, "segmenter"):
        raise UserError(f"{model}: ONNX file lacks the emsynth segmenter metadata (was it made by "
                        "exporters.keras_onnx?)")
    return props


def provenance(props: dict[str, str]) -> dict[str, Any]:
    try:
        value = json.loads(props.get("provenance", "{}"))
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def sample_tile(props: dict[str, str], sample: Path | None) -> np.ndarray:
    """One real tile (T, T) in its stored dtype: the middle slice of --sample (centre crop), else the
    validation tile of the run's store with the most foreground (so the cover shows mitochondria)."""
    tile = int(props["tile_size"])
    if sample is not None:
        from shared.tiff_io import read_image_stack

        stack = read_image_stack(sample)
        image = stack[len(stack) // 2]
        if min(image.shape) < tile:
            raise UserError(f"{sample}: slices are {image.shape[1]}x{image.shape[0]}, smaller than the "
                            f"{tile}x{tile} tile")
        y, x = (image.shape[0] - tile) // 2, (image.shape[1] - tile) // 2
        return np.ascontiguousarray(image[y:y + tile, x:x + tile])
    store_path = provenance(props).get("real_store")
    if not store_path or not Path(store_path).is_dir():
        raise UserError(f"the run's tile store ({store_path or 'not recorded'}) is not here: give --sample "
                        "STACK.tif for the test tile")
    from shared.store import TileStore

    store = TileStore(store_path)
    idx = store.indices("val")
    idx = idx if len(idx) else store.indices()
    best = int(idx[np.argmax(store.masks(idx).mean(axis=(1, 2)))])
    return store.raw_images([best])[0]


# -- the description ---------------------------------------------------------------------------------
def halo(props: dict[str, str]) -> int:
    """Half the calibrated window overlap, rounded down so that 2 * halo keeps H, W on the size divisor."""
    unit = max(int(props["size_divisor"]) // 2, 1)
    return int(props.get("recommended_overlap", "0")) // 2 // unit * unit


def preprocessing(dtype: np.dtype) -> list[dict[str, Any]]:
    """shared.normalization in the spec's terms: x = pixel * gain + offset with
    gain = 1 / (pixel_scale * std), offset = -mean / std (the same two float32 steps as normalize)."""
    gain = 1.0 / (normalization.pixel_scale(dtype) * normalization.STD)
    offset = -normalization.MEAN / normalization.STD
    return [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
            {"id": "scale_linear", "kwargs": {"gain": gain, "offset": offset}}]


def space_axes(props: dict[str, str], pixel_nm: float | None, output: bool) -> list[dict[str, Any]]:
    scale = {"unit": "nanometer", "scale": pixel_nm} if pixel_nm else {}
    h = halo(props)
    axes = []
    for axis in ("y", "x"):
        if output:  # same size as the input; `halo` pixels per side are cropped when tiling
            size: dict[str, Any] = {"tensor_id": INPUT_ID, "axis_id": axis}
            axes.append({"type": "space", "id": axis, "size": size, **({"halo": h} if h else {}), **scale})
        else:  # the training tile, then any multiple of 2**depth (the U-Net's poolings) above it
            size = {"min": int(props["tile_size"]), "step": int(props["size_divisor"])}
            axes.append({"type": "space", "id": axis, "size": size, **scale})
    return axes


def rdf_content(props: dict[str, str], *, name: str, authors: list[str], license_id: str,
                cite: list[tuple[str, str]], pixel_nm: float | None, dtype: np.dtype,
                opset: int) -> dict[str, Any]:
    """The rdf.yaml content (bioimage.io model format 0.5) for the files staged beside it."""
    threshold = float(props["threshold"])
    lo, hi = (0.0, 1.0) if np.dtype(dtype) == np.float32 else (0, int(normalization.pixel_scale(dtype)))
    return {
        "type": "model", "format_version": "0.5.12", "name": name,
        "description": "Mitochondria foreground probability in electron-microscopy slices (residual U-Net, "
                       f"Keras -> ONNX); foreground where probability >= {threshold:.6g}.",
        "authors": [{"name": a} for a in authors], "license": license_id,
        "cite": [{"text": text, "doi": doi} for text, doi in cite],
        "tags": ["electron-microscopy", "mitochondria", "semantic-segmentation", "2d", "u-net", "onnx"],
        "documentation": {"source": "README.md"}, "covers": [{"source": "cover.png"}],
        "inputs": [{
            "id": INPUT_ID, "description": "one grayscale EM slice (NHWC, as the ONNX graph)",
            "axes": [{"type": "batch"}, *space_axes(props, pixel_nm, output=False),
                     {"type": "channel", "channel_names": ["em"]}],
            # the spec casts inputs to `data.type` before and after preprocessing: float32 is what the
            # graph takes, and the range says which stored pixels the scale_linear gain is made for
            "data": {"type": "float32", "range": [lo, hi]},
            "test_tensor": {"source": "test_input.npy"}, "sample_tensor": {"source": "sample_input.tif"},
            "preprocessing": preprocessing(dtype),
        }],
        "outputs": [{
            "id": OUTPUT_ID,
            "description": f"sigmoid mitochondria probability; mask = probability >= {threshold:.6g}",
            "axes": [{"type": "batch"}, *space_axes(props, pixel_nm, output=True),
                     {"type": "channel", "channel_names": ["mitochondria"]}],
            "data": {"type": "float32", "range": [0.0, 1.0]},
            "test_tensor": {"source": "test_output.npy"}, "sample_tensor": {"source": "sample_output.tif"},
        }],
        "weights": {"onnx": {"source": ONNX_NAME, "opset_version": opset}},
        "config": {"emsynth": {"threshold": threshold, "tile_size": int(props["tile_size"]),
                               "size_divisor": int(props["size_divisor"]),
                               "recommended_overlap": int(props.get("recommended_overlap", "0")),
                               "recommended_tta": props.get("recommended_tta", "false") == "true",
                               "normalization": normalization.metadata()}},
    }


# -- the files ---------------------------------------------------------------------------------------
def test_tensors(onnx_path: Path, tile: np.ndarray, folder: Path) -> np.ndarray:
    """test_input.npy (1, T, T, 1) stored pixels and test_output.npy: the ONNX model's probability;
    the same pair as TIFF sample tensors (what a person opens in Fiji)."""
    from exporters.runtime import Segmenter
    from shared.tiff_io import write_stack

    probability = Segmenter(onnx_path, device="cpu").predict_tiles(normalization.normalize(tile)[None])[0]
    np.save(folder / "test_input.npy", tile[None, ..., None])
    np.save(folder / "test_output.npy", probability[None, ..., None].astype(np.float32))
    write_stack(folder / "sample_input.tif", tile)
    write_stack(folder / "sample_output.tif", probability.astype(np.float32))
    return probability


def write_cover(tile: np.ndarray, probability: np.ndarray, threshold: float, target: Path) -> None:
    """input | probability | mask side by side, each panel cropped to 2/3 width so the cover is 2:1
    (the aspect ratio bioimage.io asks for)."""
    from PIL import Image

    t = tile.shape[0]
    width = 2 * t // 3
    x0 = (t - width) // 2
    panels = [normalization.denormalize(normalization.normalize(tile)), np.rint(probability * 255),
              foreground_mask(probability, threshold)]
    strip = np.concatenate([p[:, x0:x0 + width] for p in panels], axis=1).astype(np.uint8)
    Image.fromarray(strip).resize((2 * t, t), Image.Resampling.BILINEAR).save(target)


def documentation(props: dict[str, str], *, name: str, pixel_nm: float | None, h: int) -> str:
    prov = provenance(props)
    calib = prov.get("calibration", {}) if isinstance(prov.get("calibration"), dict) else {}
    threshold = float(props["threshold"])
    lines = [
        f"# {name}", "",
        "Mitochondria segmentation of electron-microscopy (EM) slices: a residual U-Net trained with Keras "
        "(emsynth) and exported to ONNX. The output is the foreground probability; the mask is "
        f"`probability >= {threshold:.6g}` (threshold calibrated on the held-out validation slices).", "",
        "## Input and output",
        f"- Input `{INPUT_ID}`: one grayscale slice, axes batch, y, x, channel (NHWC, as the ONNX graph). "
        f"Any size from {props['tile_size']} up in steps of {props['size_divisor']} (2^depth poolings).",
        f"- Preprocessing: `x = (pixel / pixel_scale - {normalization.MEAN}) / {normalization.STD}` "
        "(pixel_scale 255 for uint8), written as `scale_linear`.",
        f"- Output `{OUTPUT_ID}`: sigmoid probability in [0, 1]; foreground where >= {threshold:.6g}.",
        f"- Tiling: windows of {props['tile_size']} px with a halo of {h} px per side "
        f"(the overlap of {props.get('recommended_overlap', '0')} px the threshold was calibrated with).",
        f"- Pixel size: {f'{pixel_nm:g} nm' if pixel_nm else 'not recorded'}.", "",
        "## Training", f"- Real tile store: `{prov.get('real_store', 'not recorded')}` "
        f"({prov.get('real_train_tiles', '?')} training tiles, {prov.get('val_tiles', '?')} validation "
        "tiles).",
    ]
    if prov.get("synthetic_store"):
        lines.append(f"- Synthetic tiles: {prov.get('synthetic_tiles')} from `{prov['synthetic_store']}`.")
    if isinstance(prov.get("train"), dict):
        t = prov["train"]
        lines.append(f"- {t.get('epochs', '?')} epochs, batch {t.get('batch_size', '?')}, "
                     f"learning rate {t.get('lr', '?')}, {t.get('schedule', '?')} schedule.")
    lines += ["", "## Validation",
              f"Held-out (validation z block, whole slices) IoU {calib['iou']:.4f}, Dice {calib['dice']:.4f} "
              f"at the threshold {threshold:.6g}." if {"iou", "dice"} <= calib.keys() else
              "No held-out scores were recorded with this model.",
              "The test tensors are one real tile run through this ONNX file at export."]
    lines += ["", "## Limitations",
              "Trained on one tissue and microscope; other EM (other stains, resolutions, modalities) "
              "needs checking against a few annotated slices before its masks are trusted.", "",
              f"Packaged {date.today().isoformat()} by `python -m exporters.bioimageio`.", ""]
    return "\n".join(lines)


# -- the package -------------------------------------------------------------------------------------
def build(content: dict[str, Any], folder: Path):
    """Validate the description against its staged files; the bioimageio.spec ModelDescr."""
    from bioimageio.spec import InvalidDescr, ValidationContext, build_description

    with ValidationContext(root=folder, perform_io_checks=True, log_warnings=False):
        descr = build_description(content)
    if isinstance(descr, InvalidDescr):  # e.g. a --license that is no SPDX identifier
        errors = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg[:100]}"
                           for e in descr.validation_summary.errors)
        raise UserError(f"the bioimage.io description does not validate: {errors[:300]}")
    return descr


def save(descr, folder: Path, out: Path) -> Path:
    """Write the package into the staging folder, then rename it onto `out` (zip or folder)."""
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    staged = folder.parent / ("package.zip" if out.suffix == ".zip" else "package")
    if out.suffix == ".zip":
        save_bioimageio_package(descr, output_path=staged)
    else:
        save_bioimageio_package_as_folder(descr, output_path=staged)
    if out.exists():  # appeared while we worked: never replace someone's files
        raise UserError(f"{out}: already exists")
    staged.rename(out)
    return out


def export_package(model: Path, out: Path, *, name: str, authors: list[str], license_id: str,
                   cite: list[tuple[str, str]], pixel_nm: float | None = None,
                   sample: Path | None = None) -> Path:
    check_paths(model, out)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        files = Path(tmp) / "files"
        files.mkdir()
        props = onnx_into(model, files / ONNX_NAME)
        tile = sample_tile(props, sample)
        probability = test_tensors(files / ONNX_NAME, tile, files)
        write_cover(tile, probability, float(props["threshold"]), files / "cover.png")
        (files / "README.md").write_text(documentation(props, name=name, pixel_nm=pixel_nm, h=halo(props)))
        from exporters.keras_onnx import OPSET

        content = rdf_content(props, name=name, authors=authors, license_id=license_id, cite=cite,
                              pixel_nm=pixel_nm, dtype=tile.dtype, opset=OPSET)
        return save(build(content, files), files, out)


def license_id(text: str) -> str:
    """An SPDX identifier bioimage.io accepts, checked before the minutes of export."""
    from bioimageio.spec.model.v0_5 import LicenseId

    try:
        return str(LicenseId(text))
    except ValueError:  # pydantic's ValidationError lists every SPDX identifier: one line instead
        raise UserError(f"--license {text!r} is no SPDX license identifier (e.g. CC-BY-4.0, MIT)") from None


def citation(text: str) -> tuple[str, str]:
    """'TEXT|DOI' -> (text, doi)."""
    body, sep, doi = text.rpartition("|")
    if not sep or not body.strip() or not doi.strip():
        raise UserError(f"--cite takes 'TEXT|DOI', got {text!r}")
    return body.strip(), doi.strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m exporters.bioimageio", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True,
                        help="segmenter run folder, .keras file, or an exported segmenter.onnx")
    parser.add_argument("--out", type=Path, required=True, help="new package folder, or a .zip")
    parser.add_argument("--name", default="emsynth EM mitochondria segmenter")
    parser.add_argument("--authors", default="emsynth contributors", help="names separated by ';'")
    parser.add_argument("--license", default="CC-BY-4.0", help="SPDX identifier")
    parser.add_argument("--cite", action="append", default=None,
                        help="'TEXT|DOI' of the training data (repeat; default: the EPFL CA1 data set)")
    parser.add_argument("--pixel-size-nm", type=positive_float, default=None,
                        help="pixel size of the training data (EPFL CA1: 5)")
    parser.add_argument("--sample", type=Path, default=None,
                        help="TIFF stack for the test tile (default: the run's validation tiles)")
    args = parser.parse_args(argv)
    authors = [a.strip() for a in args.authors.split(";") if a.strip()]
    if not authors:
        raise UserError("--authors names nobody")
    cite = [citation(c) for c in args.cite] if args.cite else [(EPFL_CITATION, EPFL_DOI)]
    out = export_package(args.model, args.out, name=args.name, authors=authors,
                         license_id=license_id(args.license),
                         cite=cite, pixel_nm=args.pixel_size_nm, sample=args.sample)
    print(f"wrote {out} (bioimage.io model 0.5, ONNX weights)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
