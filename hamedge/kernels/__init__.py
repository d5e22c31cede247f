"""The fused refinement for torch and GPUs: the differentiable torch chain (``torch_refine``), the
torch custom op (``torch_op``), the Triton kernel (``triton_refine``), the standard-op form for
exported graphs (``export_graph``), the TensorRT plugins (``trt_plugin``, ``onnx_plugin``) and the
CUDA/C++ plugin sources (``csrc/``). The math they all implement is hamedge.ops.refine (numpy).
Import the submodules directly; this package imports nothing."""
