"""Elementwise launches (aierun/ops/eltwise.py, kernels_src/eltwise.cc): the residual
add (bf16 + fp32 residual -> fp32) and SwiGLU's silu(gate) * up, streamed
through one core in chunks."""

from __future__ import annotations

import math

from aiebuild.designs.common import (
    KernelObject,
    iron,
    kernel_object,
    stream_program,
    streaming_core,
    tensor,
)
from aierun.abi import ArgSpec, Launch

MAX_CHUNK = 2048  # elements per ObjectFifo buffer (4 KiB of bf16)
VECTOR = 32  # bf16 lanes the kernel processes per step


def chunk(launch: Launch) -> int:
    total = launch.params["rows"] * launch.params["cols"]
    size = math.gcd(total, MAX_CHUNK)
    if size % VECTOR:
        raise ValueError(f"{launch.op}: {total} elements do not split into {VECTOR}-lane chunks")
    return size


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    """-D CHUNK and whether each operand (a, b, result) is fp32 rather than bf16."""
    wide = {f"{name}_F32": arg.dtype == "f32" for name, arg in zip("ABC", args, strict=True)}
    return kernel_object("eltwise.cc", {"CHUNK": chunk(launch), **wide})


def symbol(name: str, launch: Launch, args: list[ArgSpec]) -> str:
    """As kernels_src/eltwise.cc composes it, e.g. add_bf16_f32_f32_64."""
    return "_".join([name, *(a.dtype for a in args), str(chunk(launch))])


def _binary(launch: Launch, args: list[ArgSpec], name: str) -> str:
    lib = iron()
    size = chunk(launch)
    steps = launch.params["rows"] * launch.params["cols"] // size
    a_ty, b_ty, c_ty = (tensor(size, arg.np_dtype) for arg in args)
    a_in, b_in = lib.ObjectFifo(a_ty, name="a_in"), lib.ObjectFifo(b_ty, name="b_in")
    out = lib.ObjectFifo(c_ty, name="out")
    op = lib.Kernel(symbol(name, launch, args), kernel(launch, args).name, [a_ty, b_ty, c_ty])

    worker = lib.Worker(streaming_core(steps), [a_in.cons(), b_in.cons(), out.prod(), op])
    fills = [(a_in.prod(), None), (b_in.prod(), None)]
    return stream_program(args, fills, [(out.cons(), None)], [worker])


def design_add(launch: Launch, args: list[ArgSpec]) -> str:
    return _binary(launch, args, "add")


def design_silu_mul(launch: Launch, args: list[ArgSpec]) -> str:
    return _binary(launch, args, "silu_mul")
