"""The heatmap math in numpy (``refine``): the one definition every torch, Triton, CUDA and
TensorRT implementation in hamedge.kernels is tested against. No torch here."""
