"""Plugin ops: the NumPy kernels (used for `trt` graphs) agree with the torch reference, and the standalone
rotary op lowers to each target with the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llamaport.plugins.ops  # noqa: F401  (registers torch.ops.llamaport.*)
from llamaport.models.attention import gqa_attention as torch_reference
from llamaport.plugins.reference_numpy import gqa_attention as numpy_reference


def test_numpy_and_torch_gqa_references_agree_on_ragged_rows():
    g = torch.Generator().manual_seed(0)
    batch, seq, heads, kv_heads, dim, max_seq = 2, 3, 6, 2, 8, 12
    q = torch.randn(batch, seq, heads * dim, generator=g)
    k, v = torch.randn(2, batch, seq, kv_heads * dim, generator=g)
    angles = torch.rand(batch, seq, dim // 2, generator=g) * 6
    k_cache, v_cache = torch.randn(2, batch, kv_heads, max_seq, dim, generator=g)
    past = torch.tensor([0, 5])
    expected = torch_reference(q, k, v, angles.cos(), angles.sin(), k_cache, v_cache, past, inplace=False)
    got = numpy_reference(*(t.numpy() for t in (q, k, v, angles.cos(), angles.sin(), k_cache, v_cache, past)),
                          heads, kv_heads, dim)
    for e, g_ in zip(expected, got):
        assert np.abs(e.numpy() - g_).max() <= 1e-5


class RotaryOnly(torch.nn.Module):
    def forward(self, x, cos, sin):
        return torch.ops.llamaport.rotary_embedding(x, cos, sin, 4)


@pytest.mark.parametrize("target", ["onnx", "ort", "trt"])
def test_rotary_plugin_op_lowers_to_each_target_with_reference_numbers(target, tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    from llamaport.plugins.reference_numpy import REFERENCE_OPS
    from llamaport.plugins.translations import ONNX_OPSET, Heads, translation_table

    x = torch.randn(2, 3, 4 * 8)
    angles = torch.rand(2, 3, 4) * 6
    args = (x, angles.cos(), angles.sin())
    expected = RotaryOnly()(*args).numpy()
    program = torch.onnx.export(RotaryOnly().eval(), args, dynamo=True, opset_version=ONNX_OPSET,
                                custom_translation_table=translation_table(target, Heads(4, 4, 8)),
                                input_names=["x", "cos", "sin"])
    model = program.model_proto
    feeds = {"x": args[0].numpy(), "cos": args[1].numpy(), "sin": args[2].numpy()}
    if target == "trt":
        assert [n.op_type for n in model.graph.node if n.domain == "llamaport"] == ["RoPE"]
        got = ReferenceEvaluator(model, new_ops=REFERENCE_OPS).run(None, feeds)[0]
    else:
        got = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    onnx.checker.check_model(model)
    assert np.abs(got - expected).max() <= 1e-5
