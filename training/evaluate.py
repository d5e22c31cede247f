"""Evaluate a torch checkpoint on a labelled split with the shared driver (hamedge.evaluation).

The torch model is just one ``predict_fn``: sigmoid of the logits and the raw CAMs, exactly the
outputs of an exported graph, so the ONNX/INT8/TensorRT evaluations (which call
hamedge.evaluation.run_evaluation with their own predict_fn) are scored by the same code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hamedge.evaluation import centred_blob_baseline, run_evaluation


def evaluate_checkpoint(ckpt: str | os.PathLike | None, data_root: str | os.PathLike,
                        split: str = "test", batch_size: int = 16, limit: int | None = None,
                        with_baseline: bool = False, progress=None,
                        **data_options) -> dict[str, Any]:
    """Metrics of checkpoint ``ckpt`` (None: the packaged demo model) on ``split`` of any data set
    hamedge.datasets.load_dataset reads (``data_options``: its keyword options, e.g. uncertain,
    require_all): a JSON-able dict (classification, localisation, summary, provenance)."""
    import torch

    from hamedge.model.checkpoint import checkpoint_sha256, load_model, resolve_checkpoint
    from hamedge.training.train import load_split, torch_predict_fn

    torch.set_num_threads(os.cpu_count() or 1)
    path = resolve_checkpoint(ckpt)
    model = load_model(path)
    spec = model.spec
    labelled = load_split(data_root, split, spec.class_names, **data_options)
    result = run_evaluation(torch_predict_fn(model), labelled, spec, batch_size=batch_size,
                            limit=limit, progress=progress)
    result["checkpoint"] = {"path": str(path), "sha256": checkpoint_sha256(path),
                            "spec": spec.to_dict()}
    result["data"] = {"root": str(Path(data_root)), "split": split,
                      **{k: v for k, v in labelled.info.items() if isinstance(v, (str, int, float))}}
    if with_baseline:
        blob = centred_blob_baseline(labelled, spec, limit=limit)
        result["centred_blob_baseline"] = {"localisation": blob["localisation"],
                                           "summary": blob["summary"],
                                           "baseline": blob["baseline"]}
    return result
