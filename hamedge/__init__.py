"""hamedge: deploy HAM chest X-ray models (classification + attention heatmaps) at the edge.

Importing hamedge is cheap and never imports torch: the runtime (hamedge.runtime, hamedge.io,
hamedge.preprocess, hamedge.heatmap) works on a machine without it.
"""

__version__ = "0.1.0"
