"""Model commands: `hamedge import-reference` (reference .pth -> hamedge checkpoint) and
`hamedge inspect` (what a checkpoint is). torch is imported inside the commands only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hamedge.cli.app import app
from hamedge.errors import CheckpointError


def _class_list(text: Optional[str]) -> Optional[tuple[str, ...]]:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise CheckpointError("--classes needs at least one class name")
    return names


@app.command("import-reference")
def import_reference(
    reference: Path = typer.Argument(..., help="The reference repository's .pth (torch.save of its "
                                               "state_dict, DataParallel-wrapped or not)."),
    out: Path = typer.Option(..., "--out", "-o", help="hamedge checkpoint to write (.safetensors)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="The reference YAML config the model was trained with."),
    arch: Optional[str] = typer.Option(None, help="Backbone (overrides the config's arch)."),
    output_stride: Optional[int] = typer.Option(None, help="8, 16 or 32 (config: Downsampling)."),
    pooling: Optional[bool] = typer.Option(None, "--pooling/--no-pooling",
                                           help="Keep the first max-pool (config: Using_pooling)."),
    dilation: Optional[bool] = typer.Option(None, "--dilation/--no-dilation",
                                            help="Dilated last stages (config: Using_dilation)."),
    img_size: Optional[int] = typer.Option(None, help="Square input size (config: img_size)."),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names, in the model's "
                                                     "output order (config: Data_CLASSES)."),
    half: bool = typer.Option(False, "--half", help="Store weights as float16 (half the size)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
) -> None:
    """Convert a HAM reference checkpoint into a verified hamedge checkpoint."""
    from hamedge.model.checkpoint import checkpoint_info
    from hamedge.model.reference import convert_reference, spec_from_reference_config

    spec = spec_from_reference_config(
        config, arch=arch, output_stride=output_stride, keep_maxpool=pooling, dilation=dilation,
        input_size=img_size, class_names=_class_list(classes))
    info = checkpoint_info(convert_reference(reference, spec, out, force=force, half=half))
    print(f"wrote {out}: {spec.arch}, stride {spec.output_stride}, "
          f"{'dilated' if spec.dilation else 'not dilated'}, {spec.input_size} px, "
          f"{spec.num_classes} classes, {info.parameters / 1e6:.2f}M params, "
          f"sha256 {info.file_sha256[:16]}")


@app.command("inspect")
def inspect(
    checkpoint: Optional[Path] = typer.Argument(None, help="hamedge checkpoint (.safetensors); "
                                                           "default: the packaged demo model."),
) -> None:
    """Print a checkpoint's model spec, metadata and hashes (verifying its weights)."""
    from hamedge.model.checkpoint import checkpoint_info, resolve_checkpoint

    info = checkpoint_info(resolve_checkpoint(checkpoint))
    spec = info.spec
    print(f"checkpoint     {info.path}")
    print(f"file sha256    {info.file_sha256}")
    print(f"weights sha256 {info.weights_sha256} (verified)")
    print(f"tensors        {info.tensors} ({', '.join(info.dtypes)}), "
          f"{info.parameters / 1e6:.2f}M parameters, {info.size_bytes / 1e6:.1f} MB")
    print(f"architecture   {info.arch}, stride {spec.output_stride}, max-pool "
          f"{spec.keep_maxpool}, dilation {spec.dilation}, input {spec.in_channels}x"
          f"{spec.input_size}x{spec.input_size}, maps {spec.feature_size}x{spec.feature_size}")
    print(f"classes        {spec.num_classes}: {', '.join(spec.class_names)}")
    for key, value in sorted(info.metadata.items()):
        print(f"meta {key:<9} {value}")
    print("spec:")
    print(spec.to_json())
