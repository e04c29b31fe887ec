"""The emulated device: role checks and bf16 rounding points."""

from __future__ import annotations

import tracemalloc
from collections import Counter

import numpy as np
import pytest

from aierun.abi import BF16, ArgSpec, ElfSpec, Launch, Role
from aierun.buffers import BindingError, BufferManager
from aierun.devices import emu
from aierun.devices.emu import EmuDevice
from aierun.errors import DeviceError
from aierun.ops import matmul, numerics
from aierun.ops.numerics import to_bf16, to_bfp16


def tiny_gemm_elf() -> ElfSpec:
    args = (
        ArgSpec("x", (2, 4), "bf16", Role.INPUT),
        ArgSpec("w", (3, 4), "bf16", Role.WEIGHT, "layers.{layer}.w"),
        ArgSpec("y", (2, 3), "bf16", Role.OUTPUT),
    )
    launch = Launch("gemm", {"M": 2, "K": 4, "N": 3}, ("x", "w"), ("y",))
    return ElfSpec("tiny", "decode", 0, args, (launch,))


def weights(source: str, layout: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    return np.full(shape, 0.5, BF16)


def test_weight_buffer_never_written_fails_loudly():
    spec, device = tiny_gemm_elf(), EmuDevice()
    manager = BufferManager(device, weights)  # no preload: the weight is never written
    buffers, _ = manager.bind(spec, 0, {"x": np.ones((2, 4), BF16)})
    with pytest.raises(DeviceError, match=r"reads 'w' \(weight"):
        device.run(device.load(spec, {}), spec, buffers)


def test_preloaded_weights_compute_and_round_to_bf16():
    spec, device = tiny_gemm_elf(), EmuDevice()
    manager = BufferManager(device, weights)
    manager.preload([spec], range(2))
    x = np.full((2, 4), 1.0 + 2**-7, BF16)  # 4 * 0.5 * (1 + 2^-7) needs rounding in bf16
    buffers, written = manager.bind(spec, 1, {"x": x})
    device.run(device.load(spec, {}), spec, buffers)
    assert written == x.nbytes
    exact = 4 * 0.5 * (1 + 2**-7)
    assert buffers["y"].read().dtype == BF16
    np.testing.assert_array_equal(
        buffers["y"].read(), np.full((2, 3), exact, np.float32).astype(BF16)
    )


def test_unchanged_input_is_not_written_again():
    spec, device = tiny_gemm_elf(), EmuDevice()
    manager = BufferManager(device, weights)
    manager.preload([spec], range(1))
    x = np.ones((2, 4), BF16)
    assert manager.bind(spec, 0, {"x": x})[1] == x.nbytes
    assert manager.bind(spec, 0, {"x": x})[1] == 0


def test_binding_error_names_elf_argument_and_shapes():
    spec = tiny_gemm_elf()
    manager = BufferManager(EmuDevice(), weights)
    with pytest.raises(
        BindingError, match=r"tiny: argument 'x' \(input\) expects bf16\[2, 4\], got"
    ):
        manager.bind(spec, 0, {"x": np.ones((4, 2), BF16)})


def test_outputs_alternate_between_two_buffers():
    spec = tiny_gemm_elf()
    manager = BufferManager(EmuDevice(), weights)
    manager.preload([spec], range(1))
    x = np.ones((2, 4), BF16)
    first, second, third = (manager.bind(spec, 0, {"x": x})[0]["y"] for _ in range(3))
    assert first is not second and first is third


def test_a_cache_keeps_one_buffer_per_layer_across_calls():
    """The KV cache a prefill ELF writes: each layer's stays until that layer's next
    call, however many calls of the ELF come between (outputs alternate over two)."""
    spec = ElfSpec(
        "store", "prefill", 4,
        (ArgSpec("k", (4, 8), "bf16", Role.INPUT), ArgSpec("v", (4, 8), "bf16", Role.INPUT),
         ArgSpec("k_cache", (2, 4, 4), "f32", Role.CACHE),
         ArgSpec("v_cache", (2, 4, 4), "f32", Role.CACHE)),
        (Launch("kv_store", {"kv_heads": 2}, ("k", "v"), ("k_cache", "v_cache")),),
    )  # fmt: skip
    device, manager = EmuDevice(), BufferManager(EmuDevice(), weights)
    manager.preload([spec], range(3))
    rows = [
        np.arange(32, dtype=np.float32).reshape(4, 8).astype(BF16) + layer for layer in range(3)
    ]
    for layer in range(3):
        buffers, _ = manager.bind(spec, layer, {"k": rows[layer], "v": -rows[layer]})
        device.run(device.load(spec, {}), spec, buffers)
    for layer in range(3):
        cache = manager.cache_buffer(spec, "k_cache", layer)
        assert cache is manager.bind(spec, layer, {"k": rows[0], "v": rows[0]})[0]["k_cache"]
        expected = rows[layer].astype(np.float32).reshape(4, 2, 4).transpose(1, 0, 2)
        np.testing.assert_array_equal(cache.read(), expected)
    assert len({id(manager.cache_buffer(spec, "v_cache", layer)) for layer in range(3)}) == 3


def test_a_bfp16_gemm_converts_its_weights_once_and_computes_as_the_kernel(monkeypatch):
    args = (
        ArgSpec("x", (2, 16), "bf16", Role.INPUT),
        ArgSpec("w", (3, 16), "bf16", Role.WEIGHT, "layers.{layer}.w"),
        ArgSpec("y", (2, 3), "bf16", Role.OUTPUT),
    )
    launch = Launch("gemm", {"M": 2, "K": 16, "N": 3, "mma": "bfp16"}, ("x", "w"), ("y",))
    spec, device = ElfSpec("tiny", "prefill", 2, args, (launch,)), EmuDevice()
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 16)).astype(BF16)
    conversions = []
    monkeypatch.setattr(numerics, "to_bfp16", counting(numerics.to_bfp16, conversions))
    monkeypatch.setattr(emu, "to_bfp16", numerics.to_bfp16)
    monkeypatch.setattr(matmul, "to_bfp16", numerics.to_bfp16)
    manager = BufferManager(device, lambda source, layout, shape, dtype: w)
    manager.preload([spec], range(1))  # the weight is converted as it is written
    elf = device.load(spec, {})
    for _ in range(3):
        x = rng.standard_normal((2, 16)).astype(BF16)
        buffers, _ = manager.bind(spec, 0, {"x": x})
        device.run(elf, spec, buffers)
        expected = to_bf16(to_bfp16(x.astype(np.float32)) @ to_bfp16(w.astype(np.float32)).T)
        np.testing.assert_array_equal(buffers["y"].read(), expected)
    # the weight once, x on every call (each call's x is new), nothing converted twice
    converted = Counter(shape for shape, passed in conversions if not passed)
    assert converted == {(3, 16): 1, (2, 16): 3}


def counting(convert, calls: list):
    def wrapper(values):
        calls.append((np.shape(values), isinstance(values, numerics.Bfp16Operand)))
        return convert(values)

    return wrapper


def test_an_activation_two_bfp16_gemms_read_is_converted_once(monkeypatch):
    args = (
        ArgSpec("x", (2, 16), "bf16", Role.INPUT),
        ArgSpec("w", (3, 16), "bf16", Role.WEIGHT, "layers.{layer}.w"),
        ArgSpec("g", (2, 3), "bf16", Role.OUTPUT),
        ArgSpec("u", (2, 3), "bf16", Role.OUTPUT),
    )
    params = {"M": 2, "K": 16, "N": 3, "mma": "bfp16"}
    launches = (
        Launch("gemm", params, ("x", "w"), ("g",)),
        Launch("gemm", params, ("x", "w"), ("u",)),
    )
    spec, device = ElfSpec("gate_up", "prefill", 2, args, launches), EmuDevice()
    elf = device.load(spec, {})  # loaded before the weights are written, as prepare does
    w = np.random.default_rng(4).standard_normal((3, 16)).astype(BF16)
    manager = BufferManager(device, lambda source, layout, shape, dtype: w)
    manager.preload([spec], range(1))
    conversions = []
    monkeypatch.setattr(emu, "to_bfp16", counting(numerics.to_bfp16, conversions))
    buffers, _ = manager.bind(spec, 0, {"x": np.ones((2, 16), BF16)})
    device.run(elf, spec, buffers)
    assert conversions == [((2, 16), False)]  # x once; w was converted when written
    np.testing.assert_array_equal(buffers["g"].read(), buffers["u"].read())


@pytest.mark.parametrize("observed", [True, False])
def test_an_observed_session_reads_back_the_weights_only_bfp16_gemms_read(observed):
    """`doit simulate` copies the bytes the host wrote: a weight only a bfp16 GEMM reads
    then keeps them; unobserved, its bytes are gone and reading them fails loudly (it
    had handed out uninitialized memory, and the simulated prefill ELFs computed on it)."""
    args = (
        ArgSpec("x", (2, 16), "bf16", Role.INPUT),
        ArgSpec("w", (3, 16), "bf16", Role.WEIGHT, "layers.{layer}.w"),
        ArgSpec("y", (2, 3), "bf16", Role.OUTPUT),
    )
    launch = Launch("gemm", {"M": 2, "K": 16, "N": 3, "mma": "bfp16"}, ("x", "w"), ("y",))
    spec = ElfSpec("tiny", "prefill", 2, args, (launch,))
    w = np.random.default_rng(5).standard_normal((3, 16)).astype(BF16)
    manager = BufferManager(EmuDevice(), lambda *_: w, keep_plain=observed)
    manager.preload([spec], range(1))
    buffers, _ = manager.bind(spec, 0, {"x": np.ones((2, 16), BF16)})
    if observed:
        np.testing.assert_array_equal(buffers["w"].host, w)
    else:
        with pytest.raises(RuntimeError, match="only as a bfp16 operand"):
            _ = buffers["w"].host


def test_bfp16_weights_are_converted_once_and_read_back_from_the_cache(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((16, 64)).astype(BF16)
    cache = emu.Bfp16Cache(tmp_path)
    first = cache.converted(weight)
    np.testing.assert_array_equal(first, to_bfp16(weight.astype(np.float32)).astype(BF16))
    (entry,) = tmp_path.glob("*.npy")
    again = cache.converted(weight)
    assert isinstance(again, np.memmap) or isinstance(again.base, np.memmap)  # read, not made
    np.testing.assert_array_equal(again, first)
    other = cache.converted((weight.astype(np.float32) * 2).astype(BF16))  # other bytes
    assert len(list(tmp_path.glob("*.npy"))) == 2
    assert not np.array_equal(other, first)
    entry.write_bytes(b"damaged")  # a damaged entry is converted again
    np.testing.assert_array_equal(cache.converted(weight), first)


@pytest.mark.parametrize("with_cache", [True, False])
def test_a_weight_only_bfp16_gemms_read_keeps_no_fp32_image(tmp_path, with_cache):
    weight = np.random.default_rng(0).standard_normal((512, 1024)).astype(BF16)
    spec = ArgSpec("w", weight.shape, "bf16", Role.WEIGHT)
    cache = emu.Bfp16Cache(tmp_path) if with_cache else None

    def held(plain_read: bool) -> tuple[int, np.ndarray]:
        tracemalloc.start()
        buffer = emu.EmuBuffer(spec, "w", bfp16_operand=True, cache=cache, plain_read=plain_read)
        buffer.write(weight)
        operand = buffer.as_bfp16()
        kept = tracemalloc.get_traced_memory()[0] - operand.nbytes
        tracemalloc.stop()
        return kept, operand

    both, plain = held(True)
    only, bfp16 = held(False)
    np.testing.assert_array_equal(bfp16, plain)  # the same operand either way
    assert both - only >= weight.size * 4  # without its fp32 image


def test_an_unwritable_bfp16_cache_only_converts(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    weight = np.full((2, 8), 0.75, BF16)
    values = emu.Bfp16Cache(blocked / "cache").converted(weight)
    np.testing.assert_array_equal(values, to_bfp16(weight.astype(np.float32)).astype(BF16))


def test_a_model_larger_than_free_memory_is_refused_saying_what_it_needs(monkeypatch):
    from aierun.errors import UserError
    from aierun.model import ModelShape, tensor_shapes
    from tools.random_llama import CONFIGS

    shape = ModelShape.from_config(CONFIGS["Llama-3.1-8B"])
    weights = sum(int(np.prod(dims)) for dims in tensor_shapes(shape).values())
    monkeypatch.setattr(emu, "available_memory", lambda: 24 * 10**9)
    with pytest.raises(UserError, match=r"8\.03 G weights .* about 48\.2 GB .* 24\.0 GB"):
        EmuDevice().check_capacity(weights)
    EmuDevice().check_capacity(weights // 4)  # a 2B model fits in 24 GB
