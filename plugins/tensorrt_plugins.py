"""Our plugin ops as TensorRT quickly-deployable plugins (`tensorrt.plugin`, TensorRT >= 10.9 for `aot_impl`).

    register_plugins()     # before parsing a --target trt graph; `llamaport build` calls it

Each op of plugins/schemas.PLUGINS (GQA_PLUGIN "llamaport::GQAAttention", ROPE_PLUGIN "llamaport::RoPE") gets
- a shape/dtype descriptor (`trtp.register`): outputs like q / x; the cache outputs `aliased()` to the cache
  inputs, so TensorRT gives them the inputs' memory and the update is in place;
- an ahead-of-time implementation (`trtp.aot_impl`): a Triton kernel (plugins/triton_trt_kernels.py) compiled to
  PTX with triton.compile, plus its grid and int32 scalar arguments as shape expressions. The engine then holds
  the kernel: running it needs neither Python nor Triton (TensorRT samples/python/quickly_deployable_plugins,
  README "Loading and running a TRT engine containing an AOT plugin").
No JIT `trtp.impl` is registered: with only an AOT implementation TensorRT uses it without the node's `aot`
attribute or a PREFER_AOT_PYTHON_PLUGINS network flag (which Polygraphy's NetworkFromOnnxPath cannot set)
("If only one implementation is defined, use that": tensorrt/plugin/_lib.py, _TemplatePluginCreator.create_plugin).

The functions TensorRT inspects are generated from the PluginSpec, so their parameter names are the spec's and
cannot drift from the exporter's node attributes: `trtp.register` reads inputs (annotated TensorDesc) and
attributes (annotated int) from `inspect.signature` (tensorrt/plugin/_validate.py, _parse_register_inputs), and
`trtp.aot_impl` requires the exact parameter list "(inputs..., attributes..., outputs, tactic)" (same file,
_validate_aot_impl). `descriptor_signature` / `aot_signature` build those signatures; tests/test_tensorrt.py
compares them with the exporter's nodes without TensorRT.
"""

from __future__ import annotations

import inspect
import typing
from typing import Callable

from .schemas import GQA_PLUGIN, PLUGINS, ROPE_PLUGIN, PluginSpec

_P = inspect.Parameter


def descriptor_signature(spec: PluginSpec, tensor_desc: type) -> inspect.Signature:
    """`(q: TensorDesc, ..., num_heads: int, ...) -> Tuple[TensorDesc, ...]`, what trtp.register parses."""
    params = [_P(name, _P.POSITIONAL_OR_KEYWORD, annotation=tensor_desc) for name in spec.inputs]
    params += [_P(name, _P.POSITIONAL_OR_KEYWORD, annotation=int) for name in spec.fields]
    returns = typing.Tuple[tuple(tensor_desc for _ in spec.outputs)]  # noqa: UP006  (trtp checks typing.Tuple's args)
    return inspect.Signature(params, return_annotation=returns)


def aot_signature(spec: PluginSpec) -> inspect.Signature:
    """`(q, ..., num_heads, ..., outputs, tactic)`, the parameter list trtp.aot_impl requires."""
    names = [*spec.inputs, *spec.fields, "outputs", "tactic"]
    return inspect.Signature([_P(name, _P.POSITIONAL_OR_KEYWORD) for name in names])


def _with_signature(fn: Callable, signature: inspect.Signature, name: str) -> Callable:
    """fn (taking *args) presented to TensorRT with `signature` (inspect.signature honours __signature__)."""

    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        return fn(**bound.arguments)

    wrapper.__signature__ = signature
    wrapper.__name__ = wrapper.__qualname__ = name
    return wrapper


# ------------------------------------------------------------------------------------------------ descriptors
def describe_gqa(q, k, v, cos, sin, k_cache, v_cache, past_lengths, num_heads, num_kv_heads, head_dim):
    """out like q (B, S, H*D); the caches aliased to their inputs (written in place)."""
    return q.like(), k_cache.aliased(), v_cache.aliased()


def describe_rope(x, cos, sin, num_heads):
    return (x.like(),)


DESCRIPTORS = {GQA_PLUGIN.name: describe_gqa, ROPE_PLUGIN.name: describe_rope}


# ------------------------------------------------------------------------------------------------ AOT
def _dtype_name(trt, dtype) -> str:
    names = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16"}
    if dtype not in names:
        raise ValueError(f"llamaport plugins take float32/float16/bfloat16 activations, not {dtype}")
    return names[dtype]


def _static(expr, what: str) -> int:
    """A shape expression TensorRT knows at build time (the hidden sizes: static in every export)."""
    if not expr.is_constant():
        raise ValueError(f"{what} must be static for the plugin kernel's compile-time sizes")
    return int(expr.constant_value())


def aot_gqa(trt, trtp, q, k, v, cos, sin, k_cache, v_cache, past_lengths, num_heads, num_kv_heads, head_dim,
            outputs, tactic):
    from . import triton_trt_kernels as kernels

    dtype = _dtype_name(trt, q.dtype)
    constexprs = kernels.gqa_constexprs(num_heads, num_kv_heads, head_dim, dtype)
    name, ptx, threads, shared = kernels.compile_ptx(kernels.gqa_plugin_kernel, kernels.gqa_signature(dtype),
                                                     constexprs, options=kernels.GQA_COMPILE_OPTIONS)
    batch, seq_len = q.shape_expr[0], q.shape_expr[1]
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(seq_len, kernels.GQA_BLOCK_M)  # blocks of new tokens
    launch.grid_y = batch * num_kv_heads  # (row, kv head) pairs
    launch.block_x = threads
    launch.shared_mem = shared
    scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(seq_len), trtp.SymInt32(k_cache.shape_expr[2])])
    return name, ptx, launch, scalars


def aot_rope(trt, trtp, x, cos, sin, num_heads, outputs, tactic):
    from . import triton_trt_kernels as kernels

    head_dim = _static(x.shape_expr[2], "x's last dim (H*D)") // num_heads
    constexprs = kernels.rope_constexprs(num_heads, head_dim, _static(cos.shape_expr[2], "cos's last dim (D/2)"))
    name, ptx, threads, shared = kernels.compile_ptx(kernels.rope_plugin_kernel,
                                                     kernels.rope_signature(_dtype_name(trt, x.dtype)), constexprs)
    tokens = x.shape_expr[0] * x.shape_expr[1]
    launch = trtp.KernelLaunchParams()
    launch.grid_x = tokens
    launch.grid_y = num_heads
    launch.block_x = threads
    launch.shared_mem = shared
    return name, ptx, launch, trtp.SymIntExprs.from_tuple([trtp.SymInt32(tokens)])


AOT_IMPLS = {GQA_PLUGIN.name: aot_gqa, ROPE_PLUGIN.name: aot_rope}

_registered = False


def register_plugins() -> None:
    """Register every plugin of plugins/schemas.PLUGINS with TensorRT's plugin registry (once per process)."""
    global _registered
    if _registered:
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp

    if not hasattr(trtp, "aot_impl"):
        from llamaport.errors import MissingDependency

        raise MissingDependency(f"TensorRT {trt.__version__} has no tensorrt.plugin.aot_impl; llamaport's plugins "
                                "need TensorRT >= 10.9 (pip install -U 'llamaport[tensorrt]')")
    for spec in PLUGINS:
        describe = _with_signature(DESCRIPTORS[spec.name], descriptor_signature(spec, trtp.TensorDesc),
                                   f"describe_{spec.name}")
        trtp.register(spec.plugin_id)(describe)
        aot = AOT_IMPLS[spec.name]
        trtp.aot_impl(spec.plugin_id)(_with_signature(lambda _aot=aot, **a: _aot(trt, trtp, **a),
                                                      aot_signature(spec), f"aot_{spec.name}"))
    _registered = True
