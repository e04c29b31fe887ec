"""Elementwise launches (aierun/ops/eltwise.py, kernels_src/eltwise.cc): the residual
add and SwiGLU's silu(gate) * up, both streamed through one core in chunks."""

from __future__ import annotations

import math

from aiebuild.designs.common import KernelObject, iron, kernel_object, stream_program, tensor
from aierun.abi import BF16, ArgSpec, Launch

MAX_CHUNK = 2048  # elements per ObjectFifo buffer (4 KiB of bf16)
VECTOR = 32  # bf16 lanes the kernel processes per step


def chunk(launch: Launch) -> int:
    total = launch.params["rows"] * launch.params["cols"]
    size = math.gcd(total, MAX_CHUNK)
    if size % VECTOR:
        raise ValueError(f"{launch.op}: {total} elements do not split into {VECTOR}-lane chunks")
    return size


def kernel(launch: Launch) -> KernelObject:
    return kernel_object("eltwise.cc", {"CHUNK": chunk(launch)})


def _binary(launch: Launch, args: list[ArgSpec], name: str) -> str:
    lib = iron()
    from aie.iron.controlflow import range_

    size = chunk(launch)
    steps = launch.params["rows"] * launch.params["cols"] // size
    piece = tensor(size, BF16)
    a_in, b_in = lib.ObjectFifo(piece, name="a_in"), lib.ObjectFifo(piece, name="b_in")
    out = lib.ObjectFifo(piece, name="out")
    op = lib.Kernel(f"{name}_bf16_{size}", kernel(launch).name, [piece, piece, piece])

    def core(a, b, c, fn):
        for _ in range_(steps):
            x, y, z = a.acquire(1), b.acquire(1), c.acquire(1)
            fn(x, y, z)
            a.release(1)
            b.release(1)
            c.release(1)

    worker = lib.Worker(core, [a_in.cons(), b_in.cons(), out.prod(), op])
    fills = [(a_in.prod(), None), (b_in.prod(), None)]
    return stream_program(args, fills, [(out.cons(), None)], [worker])


def design_add(launch: Launch, args: list[ArgSpec]) -> str:
    return _binary(launch, args, "add")


def design_silu_mul(launch: Launch, args: list[ArgSpec]) -> str:
    return _binary(launch, args, "silu_mul")
