"""hamedge: deploy HAM chest X-ray models (classification + attention heatmaps) at the edge.

Importing hamedge is cheap and never imports torch: the runtime (hamedge.runtime, hamedge.io,
hamedge.preprocess, hamedge.heatmap) works on a machine without it.
"""

__version__ = "0.1.0"


def load(bundle=None, backend="auto", precision="fp32", **opts):
    """Open a model for prediction (see hamedge.api.load); imported lazily to keep this cheap."""
    from hamedge.api import load as _load

    return _load(bundle, backend, precision, **opts)
