"""The heatmap math in numpy (``refine``), the one definition every torch, Triton, CUDA and TensorRT
implementation in hamedge.kernels is tested against. No torch here.

Which refinement to call: ``refine_spec(maps, spec)`` (runtime, with the spec's gain and centre),
``refine`` (the same with explicit parameters and output dtype), ``binary_masks`` (the "inside"
decision, exact), ``refine_reference`` (the plain step-by-step definition tests compare with)."""
