"""Elementwise launches (aierun/ops/eltwise.py, kernels_src/eltwise.cc): the residual
add (bf16 + fp32 residual -> fp32) and SwiGLU's silu(gate) * up, streamed
through one core in chunks."""

from __future__ import annotations

import math
from typing import Any

from aiebuild.designs.common import (
    CoreBuffer,
    KernelObject,
    iron,
    kernel_object,
    stream_program,
    streaming_core,
)
from aierun.abi import ArgSpec, Launch
from aierun.errors import UserError

MAX_CHUNK = 2048  # elements per ObjectFifo buffer (4 KiB of bf16, 8 KiB of fp32)
LANES = 16  # elements the kernel processes per vector step (eltwise.cc LANES)


def chunk(launch: Launch) -> int:
    total = launch.params["rows"] * launch.params["cols"]
    size = math.gcd(total, MAX_CHUNK)
    if size % LANES:
        raise UserError(f"{launch.op}: {total} elements do not split into {LANES}-lane chunks")
    return size


def kernel(launch: Launch, args: list[ArgSpec]) -> KernelObject:
    """-D CHUNK and whether each operand (a, b, result) is fp32 rather than bf16."""
    wide = {f"{name}_F32": arg.dtype == "f32" for name, arg in zip("ABC", args, strict=True)}
    return kernel_object("eltwise.cc", {"CHUNK": chunk(launch), **wide})


def symbol(name: str, launch: Launch, args: list[ArgSpec]) -> str:
    """As kernels_src/eltwise.cc composes it, e.g. add_bf16_f32_f32_64."""
    return "_".join([name, *(a.dtype for a in args), str(chunk(launch))])


def core_buffers(launch: Launch, args: list[ArgSpec]) -> list[CoreBuffer]:
    """Chunks of both operands in, result chunks out."""
    size = chunk(launch)
    return [
        CoreBuffer(name, (size,), arg.np_dtype)
        for name, arg in zip(("a_in", "b_in", "out"), args, strict=True)
    ]


def _binary(launch: Launch, args: list[ArgSpec], name: str) -> Any:
    lib = iron()
    buffers = core_buffers(launch, args)
    a_in, b_in, out = (buf.make(lib) for buf in buffers)
    op = lib.Kernel(
        symbol(name, launch, args), kernel(launch, args).name, [b.type for b in buffers]
    )
    steps = launch.params["rows"] * launch.params["cols"] // chunk(launch)
    worker = lib.Worker(streaming_core(steps), [a_in.cons(), b_in.cons(), out.prod(), op])
    fills = [(a_in.prod(), None), (b_in.prod(), None)]
    return stream_program(args, fills, [(out.cons(), None)], [worker])


def design_add(launch: Launch, args: list[ArgSpec]) -> Any:
    return _binary(launch, args, "add")


def design_silu_mul(launch: Launch, args: list[ArgSpec]) -> Any:
    return _binary(launch, args, "silu_mul")
