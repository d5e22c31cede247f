"""The fused refinement for torch and GPUs; the math they all implement is hamedge.ops.refine (numpy).
Each entry point has one kind of caller:

- ``torch_refine.refine_maps_torch``: differentiable torch ops (training, the model's forward);
- ``torch_op.refine_torch``: the ``hamedge::fused_refine`` custom op for inference (CPU: the
  numpy path; CUDA: the Triton kernel ``triton_refine``, which the TensorRT plugin also runs);
- ``export_graph.fused_refine_for_export``: standard ONNX ops, for full-resolution graphs;
- ``onnx_plugin`` / ``trt_plugin`` / ``csrc/``: the FusedRefine TensorRT plugin (ONNX node, Python
  plugin, C++/CUDA plugin).

Import the submodules directly; this package imports nothing."""
