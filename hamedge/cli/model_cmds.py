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
    import torch

    from hamedge.model.checkpoint import checkpoint_sha256, load_checkpoint, load_model
    from hamedge.model.reference import (convert_reference, read_reference_state_dict,
                                         spec_from_reference_config)

    spec = spec_from_reference_config(
        config, arch=arch, output_stride=output_stride, keep_maxpool=pooling, dilation=dilation,
        input_size=img_size, class_names=_class_list(classes))
    convert_reference(reference, spec, out, force=force, half=half)

    # Check the written file: every reference tensor made it in unchanged (up to --half), and
    # the model loads and runs.
    _, state, _ = load_checkpoint(out)
    source = read_reference_state_dict(reference)
    if set(source) != set(state):
        raise CheckpointError(f"{out.name}: keys differ from the reference checkpoint's")
    tolerance = 1e-3 if half else 0.0
    for name, value in source.items():
        value = value.float() if value.is_floating_point() else value
        diff = (state[name].to(value.dtype) - value).abs().max() if value.numel() else 0
        if float(diff) > tolerance * max(1.0, float(value.abs().max()) if value.numel() else 0.0):
            raise CheckpointError(f"{out.name}: tensor {name} changed in conversion")
    model = load_model(out)
    with torch.no_grad():
        probe = torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size)
        result = model(probe, refine=False)
    if not all(torch.isfinite(t).all() for t in (result.anomaly_logit, result.class_logits)):
        raise CheckpointError(f"{out.name}: the imported model gives non-finite outputs")
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {spec.arch}, stride {spec.output_stride}, "
          f"{'dilated' if spec.dilation else 'not dilated'}, {spec.input_size} px, "
          f"{spec.num_classes} classes, {params / 1e6:.2f}M params, "
          f"sha256 {checkpoint_sha256(out)[:16]}")


@app.command("inspect")
def inspect(
    checkpoint: Optional[Path] = typer.Argument(None, help="hamedge checkpoint (.safetensors); "
                                                           "default: the packaged demo model."),
) -> None:
    """Print a checkpoint's model spec, metadata and hashes (verifying its weights)."""
    from hamedge.model.checkpoint import (META_SHA, checkpoint_sha256, infer_architecture,
                                          load_checkpoint, resolve_checkpoint)

    path = resolve_checkpoint(checkpoint)
    spec, state, meta = load_checkpoint(path)  # verifies the weights hash
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        weights_hash = handle.metadata()[META_SHA]
        dtypes = sorted({str(handle.get_slice(k).get_dtype()) for k in handle.keys()})
    found = infer_architecture(state)
    params = sum(v.numel() for k, v in state.items() if v.is_floating_point()
                 and not k.endswith(("running_mean", "running_var")))
    print(f"checkpoint     {path}")
    print(f"file sha256    {checkpoint_sha256(path)}")
    print(f"weights sha256 {weights_hash} (verified)")
    print(f"tensors        {len(state)} ({', '.join(dtypes)}), {params / 1e6:.2f}M parameters, "
          f"{path.stat().st_size / 1e6:.1f} MB")
    print(f"architecture   {found['arch']}, stride {spec.output_stride}, max-pool "
          f"{spec.keep_maxpool}, dilation {spec.dilation}, input {spec.in_channels}x"
          f"{spec.input_size}x{spec.input_size}, maps {spec.feature_size}x{spec.feature_size}")
    print(f"classes        {spec.num_classes}: {', '.join(spec.class_names)}")
    for key, value in sorted(meta.items()):
        print(f"meta {key:<9} {value}")
    print("spec:")
    print(spec.to_json())
