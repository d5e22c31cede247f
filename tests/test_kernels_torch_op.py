"""torch.ops.hamedge.fused_refine: CPU implementation, fake implementation, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hamedge.ops.refine import refine_reference
from hamedge.kernels.torch_op import refine_torch
from hamedge.kernels.torch_refine import refine_maps_torch


def _maps(shape, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.random(shape).astype(np.float32) ** 4 * 5
    m[m < 0.2] = 0
    return torch.from_numpy(m)


def test_cpu_op_matches_reference_and_torch_chain():
    x = _maps((2, 15, 16, 16))
    out = torch.ops.hamedge.fused_refine(x, 512, 512, 100.0, 0.4, None)
    assert out.dtype == torch.float32 and out.shape == (2, 15, 512, 512)
    assert (out.numpy() - refine_reference(x.numpy(), 512)).__abs__().max() < 1e-3
    assert (out - refine_maps_torch(x, (512, 512))).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.uint8])
def test_cpu_op_dtypes(dtype):
    x = _maps((1, 4, 7, 7), seed=1)
    ref = refine_reference(x.numpy(), (50, 60))
    out = refine_torch(x, (50, 60), out_dtype=dtype)
    assert out.dtype == dtype and out.shape == (1, 4, 50, 60)
    if dtype == torch.uint8:
        assert (out.int().numpy() - np.round(255 * ref)).__abs__().max() <= 1
    else:
        assert (out.float().numpy() - ref).__abs__().max() < 1e-3


def test_fake_and_schema():
    x = _maps((2, 3, 5, 5), seed=2)
    torch.library.opcheck(torch.ops.hamedge.fused_refine.default, (x, 17, 19, 100.0, 0.4, None),
                          test_utils=("test_schema", "test_faketensor"))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        out = torch.ops.hamedge.fused_refine(fake, 64, 32, 100.0, 0.4, torch.uint8)
    assert out.shape == (2, 3, 64, 32) and out.dtype == torch.uint8


def test_rejects_bad_inputs():
    with pytest.raises(ValueError):
        refine_torch(_maps((4, 4)), 8)
    with pytest.raises(ValueError):
        refine_torch(_maps((1, 1, 4, 4)), 8, out_dtype=torch.int32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton kernel path)")
def test_cuda_op_matches_reference():  # pragma: no cover - GPU only
    x = _maps((8, 15, 16, 16), seed=3)
    out = refine_torch(x.cuda(), 512).cpu().numpy()
    assert np.abs(out - refine_reference(x.numpy(), 512)).max() < 1e-3
