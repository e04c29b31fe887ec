"""The inference pipeline: prepare, prefill, decode, generate.

One Session owns a device, the loaded ELFs and the buffers. `prepare()` loads and
verifies every artifact and writes all weights into static buffers once; after
that a prefill or decode step only writes the activations that changed. Every
step records into the profiler; there is no other code path for profiling or
verification.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog

from aierun import logs, paths
from aierun.abi import (
    BF16,
    BUCKET_MULTIPLE,
    FLASH_ATTN,
    KV_CACHE,
    LM_HEAD_GEMV,
    O_FFN,
    O_GEMV_FFN,
    QUANT_DTYPES,
    RMS_GEMMS_ROPE,
    RMS_GEMV_ROPE,
    SOURCE_JOIN,
    WALK,
    ElfSpec,
    Role,
    attention_elf,
    chunk_elfs,
    decode_instance,
    interleave_rows,
    split_layout,
)
from aierun.artifacts import ArtifactError, ArtifactSet, find_manifest
from aierun.buffers import BufferManager
from aierun.bundle import open_local
from aierun.devices import open_device
from aierun.devices.base import Buffer, Device
from aierun.errors import UserError
from aierun.host.embedding import EmbeddingTable, pad_prompt
from aierun.host.kv_cache import KVCache
from aierun.host.norm import final_norm
from aierun.host.prefix_slots import PrefixSlots, common_prefix
from aierun.host.sampling import GREEDY, Sampling, sample
from aierun.model import Checkpoint, resolve_model, rope_table, tensor_shapes
from aierun.ops.decode_attn import query_rows
from aierun.ops.quant import quantized_weight
from aierun.profiling import flow
from aierun.profiling.recorder import KernelCall, Profiler, clock
from aierun.registry import Reference, open_pulled

log = structlog.get_logger("aierun.session")

# Called after every prefill layer with (layer, residual stream [T, E], fp32).
LayerHook = Callable[[int, np.ndarray], None]
# Called with the fp32 logits each generated token is chosen from.
LogitsHook = Callable[[np.ndarray], None]


class CallObserver(Protocol):
    """Sees every ELF call's bound buffers just before and just after the device runs
    it (`doit simulate` captures real calls this way)."""

    def before_run(self, spec: ElfSpec, buffers: dict[str, Buffer]) -> None: ...

    def after_run(self, spec: ElfSpec, buffers: dict[str, Buffer]) -> None: ...


class Session:
    def __init__(
        self,
        checkpoint: Checkpoint,
        artifacts: ArtifactSet,
        device: Device,
        profiler: Profiler | None = None,
        observer: CallObserver | None = None,
    ):
        artifacts.check_model(checkpoint.shape, checkpoint.name)
        if artifacts.target not in device.targets:
            raise ArtifactError(
                f"the artifacts in {artifacts.root} are for target {artifacts.target!r}; "
                f"device {device.name} runs {', '.join(device.targets)}. Compile for it "
                f"(`doit compile target={device.targets[0]}`) or use --device emu."
            )
        self.checkpoint = checkpoint
        self.shape = checkpoint.shape
        self.artifacts = artifacts
        self.device = device
        self.profiler = profiler or Profiler(device=device.name)
        self.observer = observer
        # An observer reads the calls' buffers as the host wrote them, weights included.
        self.buffers = BufferManager(device, self._weight_source, keep_plain=observer is not None)
        self._elfs: dict[str, tuple[ElfSpec, Any]] = {}
        self._warm: set[str] = set()  # the ELF instances run once on zeros (_warm_up)
        self._rope = rope_table(self.shape, self.shape.max_positions)
        self._chunk_rope: dict[tuple[int, int], np.ndarray] = {}  # _rope_rows
        self._embed: EmbeddingTable | None = None  # read into memory at prepare
        self._zero_row: np.ndarray | None = None  # _first_residual's d
        self._final_norm = checkpoint.tensor("model.norm.weight").astype(np.float32)
        self._pad_id = _pad_token(checkpoint.config)
        self.kv: KVCache | None = None  # the device's KV cache, allocated at prepare
        self.position = 0
        # The tokens whose K/V the cache holds, at positions [0, position): what a later
        # prompt may share (prefix reuse, `generate(..., reuse=True)`).
        self.tokens: list[int] = []
        # Other conversations' cached prefixes (`aierun serve --slots N`); None: only
        # the one the cache holds.
        self.slots: PrefixSlots | None = None
        self.prepared = False
        self.prepare_s: float | None = None  # seconds prepare took (loading, weights)
        self.last_prompt_tokens = 0  # the last generate's prompt, cached part included
        self._pin: Path | None = None  # this run's pin of its store entries (prepare)
        self.last_prompt: tuple[int, int] | None = None  # (prompt tokens, bucket)
        self.last_reused = 0  # cached prompt tokens the last generate did not recompute
        # Measured wall seconds (prefill per bucket, one decode step): what prefix reuse
        # weighs, decode steps over a prompt's new tokens against a prefill of all of it.
        self._prefill_s: dict[int, float] = {}
        self._decode_s: float | None = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- prepare -------------------------------------------------------------
    @property
    def kv_bytes_per_position(self) -> int:
        """Memory one cached position takes: K and V of every layer, in the cache's dtype."""
        shape, itemsize = self.shape, self.spec(O_GEMV_FFN).arg(KV_CACHE).np_dtype.itemsize
        return 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * itemsize

    @property
    def context(self) -> int:
        """Positions a generation may take: the model's context, within what the
        decode ELF's KV cache was compiled to hold (read from its plan: known before
        prepare loads anything)."""
        if O_GEMV_FFN in self._elfs:
            decode = self.spec(O_GEMV_FFN)
        else:
            decode = self.artifacts.load(O_GEMV_FFN).spec
        return min(self.shape.max_positions, decode.arg(KV_CACHE).shape[2])

    def check_prompt(self, prompt: str, n_tokens: int) -> None:
        """Refuse a prompt and answer the context cannot hold, before prepare loads a
        weight (on the NPU, a large model takes a minute to load)."""
        self._check_context(len(self.checkpoint.encode_prompt(prompt)), n_tokens)

    def prepare(self) -> None:
        """Load and verify every ELF, then write all weights into static buffers."""
        weights = sum(math.prod(dims) for dims in tensor_shapes(self.shape).values())
        self.device.check_capacity(weights)
        self._pin = self.artifacts.pin()  # a `doit cache gc=1` meanwhile keeps them
        with self.profiler.in_phase("prepare") as span:
            self.checkpoint.tokenizer  # noqa: B018  (loads once, here rather than in "tokenize")
            layers = range(self.shape.n_layers)
            for instance in self.artifacts.instances:
                artifact = self.artifacts.load(instance)
                self._elfs[instance] = (
                    artifact.spec,
                    self.device.load(artifact.spec, artifact.files),
                )
            self.buffers.preload((spec for spec, _ in self._elfs.values()), layers)
            self._embed = EmbeddingTable(self.checkpoint.tensor("model.embed_tokens.weight"))
            self.kv = KVCache.allocate(
                self.device, self.spec(O_GEMV_FFN).arg(KV_CACHE), self.shape.n_layers
            )
            for spec, _ in reversed(self._elfs.values()):  # every generation calls these
                if not spec.bucket:
                    self._warm_up(spec)
        self.prepared = True
        self.prepare_s = span.dur_s
        log.debug(  # in the JSON log; the console's one line per run is the CLI's summary
            "weights.preloaded",
            elfs=len(self._elfs),
            buffers=len(self.buffers.all_buffers()),
            mb=round(self.buffers.preloaded_bytes / 1e6, 1),
            seconds=round(span.dur_s, 2),
        )

    def warm_up(self, *buckets: int, chunks: bool = True) -> None:
        """Warm up the prefill ELFs of `buckets` (default: every bucket) not run yet,
        with `chunks` the attention ELFs of a long prompt's later chunks too. A bucket
        is otherwise warmed just before its first prefill: a run uses one bucket, and
        warming a 2048 bucket on emu takes seconds of its cold start. A profile warms
        them all first, so its prefill measures the steady state."""
        wanted = set(buckets or self.artifacts.buckets)
        for spec, _ in self._elfs.values():
            skipped = not chunks and spec.launches[0].params.get("past", 0) > 0
            if spec.bucket in wanted and spec.instance not in self._warm and not skipped:
                self._warm_up(spec)

    def _warm_up(self, spec: ElfSpec) -> None:
        """Run a loaded ELF once on zero inputs, unrecorded: its first call pays for
        what every later call reuses (on the NPU the hardware context and instruction
        stream, on emu numpy's first allocation of each temporary), and that cost
        belongs to prepare, not to the first prefill layer."""
        self._warm.add(spec.instance)
        handle = self._elfs[spec.instance][1]
        zeros = {arg.name: np.zeros(arg.shape, arg.np_dtype) for arg in spec.args_with(Role.INPUT)}
        layer = 0 if any(arg.per_layer() for arg in spec.args) else None
        buffers, _ = self.buffers.bind(spec, layer, zeros)
        self.device.stage(handle, spec, buffers)
        self.device.run(handle, spec, buffers)

    def _weight_source(
        self, source: str, layout: str, shape: tuple[int, ...], dtype: str
    ) -> np.ndarray:
        # A joined source (SwiGLU's gate+up, aierun/abi.py) interleaves its tensors' rows,
        # as GGUF blocks for a block type: the records then tile the interleaved rows.
        group, _ = split_layout(layout)
        parts = [self._rows(part, dtype) for part in source.split(SOURCE_JOIN)]
        tensor = parts[0] if group is None else interleave_rows(parts, group)
        if dtype in QUANT_DTYPES:
            return quantized_weight(tensor, dtype, layout, shape)
        if dtype == "f32":  # a norm weight a GEMV's prologue reads (aiebuild/ops/gemv.py)
            return tensor.astype(np.float32)
        if layout == "partitioned_rows":  # [V, E] -> zero-padded [P, rows, E]
            padded = np.zeros((shape[0] * shape[1], shape[2]), BF16)
            padded[: tensor.shape[0]] = tensor
            return padded.reshape(shape)
        return tensor

    def _rows(self, source: str, dtype: str) -> np.ndarray:
        """A checkpoint matrix as GGUF blocks of a block type, else as bf16 rows."""
        if dtype in QUANT_DTYPES:
            return self.checkpoint.blocks(source, dtype)
        return self.checkpoint.tensor(source)

    def spec(self, instance: str) -> ElfSpec:
        """The spec of a loaded ELF (after prepare)."""
        return self._elfs[instance][0]

    # -- one device call -----------------------------------------------------
    def call(
        self, instance: str, layer: int | None, read: tuple[str, ...] = (), **inputs: Any
    ) -> dict[str, Buffer]:
        """Run one ELF. Inputs are host arrays or device buffers from an earlier call;
        the outputs named in `read` are synced back for the host."""
        spec, handle = self._elfs[instance]
        start = clock()
        buffers, nbytes = self.buffers.bind(spec, layer, inputs)
        self.device.stage(handle, spec, buffers)
        bound = clock()
        if self.observer is not None:
            self.observer.before_run(spec, buffers)
        self.device.run(handle, spec, buffers)
        ran = clock()
        if self.observer is not None:
            self.observer.after_run(spec, buffers)
        for name in read:
            buffers[name].sync_from_device()
        self.profiler.kernel(
            KernelCall(
                self.profiler.phase, instance, layer, start,
                bound - start, ran - bound, clock() - ran, nbytes,
            )
        )  # fmt: skip
        return buffers

    # -- prefill -------------------------------------------------------------
    def bucket_for(self, n_tokens: int, seq_len: int | None = None) -> int:
        buckets = self.artifacts.buckets
        if seq_len is not None:
            if seq_len not in buckets:
                raise UserError(
                    f"--seq-len {seq_len} is not a compiled prefill bucket {list(buckets)}; "
                    + self._compile_advice(seq_len)
                )
            if n_tokens > seq_len:
                raise UserError(f"the prompt has {n_tokens} tokens, more than --seq-len {seq_len}")
            return seq_len
        for bucket in buckets:
            if bucket >= n_tokens:
                return bucket
        if n_tokens > self.shape.max_positions:
            raise UserError(
                f"the prompt has {n_tokens} tokens, more than the model's context of "
                f"{self.shape.max_positions} (max_position_embeddings): shorten it"
            )
        bucket = min(_next_pow2(max(n_tokens, MIN_BUCKET)), self.shape.max_positions)
        raise UserError(
            f"the prompt has {n_tokens} tokens; the largest compiled prefill bucket holds "
            f"{buckets[-1]}. Shorten the prompt or {self._compile_advice(bucket)}."
        )

    def _compile_advice(self, bucket: int) -> str:
        """What to do for a bucket that is not compiled: the command that compiles it,
        or, for a length the compiler refuses, what a bucket may be."""
        most = self.shape.max_positions
        if bucket % BUCKET_MULTIPLE or bucket > most:
            return (
                f"a prefill bucket is a multiple of {BUCKET_MULTIPLE} up to the model's "
                f"context ({most}): pass one of the compiled ones"
            )
        return f"compile it with `doit compile buckets={_with(self.artifacts.buckets, bucket)}`"

    def prefill(
        self,
        ids: list[int],
        seq_len: int | None = None,
        capacity: int = 0,
        on_layer: LayerHook | None = None,
    ) -> np.ndarray:
        """Run the prompt through all layers; returns the fp32 logits of its last token."""
        if not self.prepared:
            self.prepare()  # once, and not counted in the prefill phase
        with self.profiler.in_phase("prefill"):
            return self._prefill(ids, seq_len, capacity, on_layer)

    def _prefill(
        self, ids: list[int], seq_len: int | None, capacity: int, on_layer: LayerHook | None
    ) -> np.ndarray:
        n = len(ids)
        if n == 0:
            raise UserError("the prompt is empty")
        if seq_len is None and on_layer is None and self.artifacts.buckets[-1] < n <= self.context:
            return self._prefill_long(ids, capacity)
        bucket = self.bucket_for(n, seq_len)
        self.warm_up(bucket, chunks=False)  # a prompt within a bucket runs no later chunk
        self.last_prompt = (n, bucket)
        self.tokens, self.position = [], 0  # a failure part way leaves no stale cache
        start = clock()
        x = self._prefill_chunk(ids, 0, bucket, on_layer)
        logits = self._logits([x], row=n - 1)
        self.tokens, self.position = list(ids), n
        self._prefill_s[bucket] = clock() - start
        return logits

    def _prefill_chunk(
        self, ids: list[int], past: int, bucket: int, on_layer: LayerHook | None = None
    ) -> Buffer:
        """`ids`, at positions past .. past + len(ids) - 1, through every layer in one
        bucket; their K/V go into the cache. Returns the last layer's output rows."""
        prof, n = self.profiler, len(ids)
        with prof.cpu(flow.EOS_PAD):
            padded = pad_prompt(ids, bucket, self._pad_id)
        with prof.cpu(flow.EMBED_LOOKUP):
            x = self._embedded(f"{RMS_GEMMS_ROPE}.s{bucket}", padded)
        rope = self._rope_rows(past, bucket)
        with prof.span("layers"):
            for layer in logs.progress(range(self.shape.n_layers), "prefill layers", bucket):
                with prof.span("layer", layer):
                    x = self._prefill_layer(layer, bucket, past, x, rope)
                if on_layer is not None:
                    on_layer(layer, x.read_rows(0, n).copy())
        return x

    def _rope_rows(self, past: int, bucket: int) -> np.ndarray:
        """The rope table's rows of a chunk, one array object per chunk position: the
        input buffer is written for the first layer and skipped for the others."""
        key = (past, bucket)
        if key not in self._chunk_rope:
            self._chunk_rope[key] = self._rope[past : past + bucket]
        return self._chunk_rope[key]

    def chunk_plan(self, n: int) -> list[tuple[int, int, int]] | None:
        """(first position, tokens, bucket) of each chunk a prompt of `n` tokens is
        prefilled in: whole largest buckets (the build compiles later chunks' attention
        at their multiples: aiebuild/specs.py chunk_pasts), then, of the buckets that
        hold the rest and whose attention ELF after that past was compiled, the one
        whose chunk the npu2 time model prices lowest (`_chunk_ms`; the smaller where
        it prices none); None when some chunk has no such ELF."""
        largest = self.artifacts.buckets[-1]
        starts = range(0, n, largest)
        plan = [(past, min(largest, n - past)) for past in starts]
        chunks = []
        for past, length in plan:
            fits = [
                b for b in self.artifacts.buckets if b >= length and self._has_chunk_elfs(past, b)
            ]
            if not fits:
                return None
            chunks.append((past, length, min(fits, key=lambda b: (self._chunk_ms(past, b), b))))
        return chunks

    def _chunk_ms(self, past: int, bucket: int) -> float:
        """A chunk's modeled npu2 time: one call of each of its three prefill ELFs (per
        layer alike, so one layer's compares), infinite where the manifest has none."""
        times = [self.artifacts.npu2_model_ms(name) for name in chunk_elfs(past, bucket)]
        return math.inf if None in times else sum(times)

    def _has_chunk_elfs(self, past: int, bucket: int) -> bool:
        """Whether every ELF of a chunk at `past` in `bucket` was compiled."""
        return all(name in self._elfs for name in chunk_elfs(past, bucket))

    def _prefill_long(self, ids: list[int], capacity: int) -> np.ndarray:
        """A prompt longer than every bucket, within the context: prefilled in chunks,
        each attending to the cache the earlier ones filled (chunk_plan); or, with
        artifacts that have no attention ELF for some chunk, its first bucket's worth
        prefilled and the rest fed as decode steps."""
        plan = self.chunk_plan(len(ids))
        if plan is None:
            return self._prefill_then_feed(ids, self.artifacts.buckets[-1], capacity)
        for _, _, bucket in plan:
            self.warm_up(bucket)
        self.last_prompt = (len(ids), plan[0][2])
        self.tokens, self.position = [], 0
        for past, length, bucket in plan:
            log.debug("prefill.chunk", past=past, tokens=length, bucket=bucket)
            x = self._prefill_chunk(ids[past : past + length], past, bucket)
        logits = self._logits([x], row=plan[-1][1] - 1)
        self.tokens, self.position = list(ids), len(ids)
        return logits

    def _prefill_then_feed(self, ids: list[int], head: int, capacity: int) -> np.ndarray:
        """A prompt longer than every bucket whose chunks the artifacts cannot take:
        its first `head` tokens prefilled, the rest fed one decode step each (each
        appends its K/V and attends to all before it: exactly causal), far slower per
        token than a prefill."""
        tail = ids[head:]
        log.warning(
            "prefill.tail_as_decode_steps", prompt_tokens=len(ids), prefilled=head,
            decode_steps=len(tail), faster="compile the artifacts again with `doit compile`",
        )  # fmt: skip
        logits = self._prefill(ids[:head], None, capacity, None)
        for token in logs.progress(tail, "the prompt's tail as decode steps", len(tail)):
            logits = self._decode(token)
        return logits

    def _reuse(self, ids: list[int], capacity: int) -> np.ndarray | None:
        """The logits of the last of `ids` from the cached positions `ids` begins with,
        the rest fed through decode steps (each appends its K/V and attends to all
        before it: exactly causal attention); None when prefilling `ids` whole is
        measured to be cheaper, or nothing is shared.

        The last token always runs (its logits choose the first new token), so a prompt
        sent again reuses all but one position. Decode steps cost far more per token
        than one prefill, so a long new suffix is prefilled whole: it cannot be a chunk,
        since chunks start only at multiples of the largest bucket (chunk_plan)."""
        shared = min(common_prefix(self.tokens, ids), len(ids) - 1)
        if shared == 0 or not self._decode_pays(len(ids) - shared, len(ids)):
            return None
        self.last_reused = shared
        del self.tokens[shared:]  # the cache's later positions are stored before read
        self.position = shared
        for token in ids[shared:]:
            logits = self._decode(token)
        return logits

    def _switch_slot(self, slots: PrefixSlots, ids: list[int]) -> None:
        """Before `ids` replaces what the cache holds: keep the held conversation aside
        if `ids` would lose part of it, and take the kept one that shares the most with
        `ids` when that is more than the held one shares and decoding from it pays."""
        held = common_prefix(self.tokens, ids)
        slot, shared = slots.best(ids)
        if held < len(self.tokens):
            slots.keep(self.tokens, self.kv)
        usable = min(shared, len(ids) - 1)
        if slot is None or usable <= held or not self._decode_pays(len(ids) - usable, len(ids)):
            return
        slots.take(slot)
        self.kv.restore(slot.kv)
        self.tokens, self.position = list(slot.tokens), len(slot.tokens)
        log.debug("prefix.slot", tokens=len(slot.tokens), shared=shared, kept=len(slots))

    def _decode_pays(self, steps: int, n: int) -> bool:
        """Whether `steps` decode steps are expected to take less time than a prefill
        of `n` tokens (its chunks, for a prompt longer than every bucket), both from
        this session's measurements (an unmeasured decode step: no; a bucket not run
        yet: the nearest one run, scaled by size; a later chunk as a first one, which
        is a little cheaper)."""
        if self._decode_s is None or not self._prefill_s:
            return False
        plan = self.chunk_plan(n) if n <= self.context else None
        if plan is None:  # no prefill can take it: only the cache can
            return True
        return steps * self._decode_s < sum(self._bucket_s(bucket) for _, _, bucket in plan)

    def _bucket_s(self, bucket: int) -> float:
        """Seconds a prefill in `bucket` is expected to take: as measured, or the
        nearest bucket's measurement scaled by size."""
        nearest = min(self._prefill_s, key=lambda b: abs(b - bucket))
        return self._prefill_s[nearest] * bucket / nearest

    def _embedded(self, instance: str, ids: np.ndarray, name: str = "x") -> Buffer:
        """The embedding rows of `ids`, written straight into the input buffer `name` of
        the first layer's call (bound there as a device buffer: no second host copy)."""
        buffer = self.buffers.input_buffer(self.spec(instance), name)
        buffer.write_with(lambda host: self._embed.lookup(ids, host))
        return buffer

    def _prefill_layer(
        self, layer: int, bucket: int, past: int, x: Any, rope: np.ndarray
    ) -> Buffer:
        s = f".s{bucket}"
        proj = self.call(RMS_GEMMS_ROPE + s, layer, read=("k_cache", "v_cache"), x=x, rope=rope)
        # Its kv_store launch wrote K/V per head in fp32: copied into the decode cache,
        # the padding's rows too. A later chunk's attention reads them from the cache;
        # whatever was there (on the NPU, memory never written) would reach the prompt's
        # own rows: a masked weight times NaN is NaN, and a bfp16 block takes its
        # exponent from its largest value. Decode overwrites them before it reads them.
        with self.profiler.cpu(flow.KV_CACHE_EXTRACT, layer):
            self.kv.keep_prompt(layer, proj["k_cache"].host, proj["v_cache"].host, bucket, past)
        if past:  # a later chunk attends to the cache: the past and, just written, itself
            kv = self.kv.buffers[layer]
            attn = self.call(attention_elf(past) + s, layer, q_roped=proj["q_roped"], kv_cache=kv)
        else:
            attn = self.call(
                FLASH_ATTN + s, layer,
                q_roped=proj["q_roped"], k_roped=proj["k_roped"], v=proj["v"],
            )  # fmt: skip
        # The residual input is already on the device (written for the first call).
        return self.call(O_FFN + s, layer, attn_out=attn["attn_out"], x=proj["x"])["y"]

    # -- decode --------------------------------------------------------------
    def decode(self, token: int, ffn: str | None = None) -> np.ndarray:
        """Feed one token at the current position; returns the next token's logits.
        `ffn`: the o_gemv_ffn instance to run (default: the shortest attention walk
        that reaches the position; any walk that does gives the same logits, which is
        how `doit simulate` captures each)."""
        with self.profiler.in_phase("decode"), self.profiler.span("token", self.position):
            return self._decode(token, ffn)

    def _decode(self, token: int, ffn: str | None = None) -> np.ndarray:
        pos, prof, start = self.position, self.profiler, clock()
        if pos >= self.context:
            raise UserError(f"the context is full ({self.context} positions)")
        ffn = ffn or self._decode_ffn(pos)
        walk = self.spec(ffn).params.get(WALK, self.context)
        if pos >= walk:
            raise ValueError(f"{ffn} attends to {walk} positions, not position {pos}")
        with prof.cpu(flow.EMBED_LOOKUP):
            residual = self._first_residual(token)
        rope_row = self._rope[pos : pos + 1]  # one object: written once, skipped after
        with prof.span("layers"):
            for layer in range(self.shape.n_layers):
                with prof.span("layer", layer):
                    residual = self._decode_layer(layer, pos, residual, rope_row, ffn)
        logits = self._logits(list(residual.values()), row=0)
        del self.tokens[pos:]  # a step that failed part way stored nothing to keep
        self.tokens.append(token)
        self.position = pos + 1
        elapsed = clock() - start  # smoothed: one step on a busy machine is noisy
        self._decode_s = elapsed if self._decode_s is None else 0.8 * self._decode_s + 0.2 * elapsed
        return logits

    def _decode_ffn(self, pos: int) -> str:
        """The o_gemv_ffn instance a step at `pos` runs: the one whose attention walks
        the fewest cached positions past `pos` (aiebuild/specs.py decode_walks), else
        the whole cache's."""
        walks = sorted(
            spec.params[WALK] for spec, _ in self._elfs.values()
            if spec.name == O_GEMV_FFN and spec.params.get(WALK, 0) > pos
        )  # fmt: skip
        return decode_instance(O_GEMV_FFN, walks[0] if walks else None)

    def _first_residual(self, token: int) -> dict[str, Any]:
        """The first layer's residual inputs: the token's embedding as x or, where the
        projections' prologue adds the previous layer's d and h (aiebuild/specs.py
        `_residual_in_next_layer`), as h beside a d of zeros (x + 0 is x)."""
        if not any(arg.name == "h" for arg in self.spec(RMS_GEMV_ROPE).args_with(Role.INPUT)):
            return {"x": self._embedded(RMS_GEMV_ROPE, np.array([token]))}
        if self._zero_row is None:  # one object: written once, skipped after
            self._zero_row = np.zeros((1, self.shape.hidden), np.float32)
        return {"d": self._zero_row, "h": self._embedded(RMS_GEMV_ROPE, np.array([token]), "h")}

    def _decode_layer(
        self, layer: int, pos: int, residual: dict[str, Any], rope_row: np.ndarray, ffn: str
    ) -> dict[str, Buffer]:
        """One layer of a decode step; returns the next layer's residual inputs (y as x,
        or d and h), whose sum is this layer's output."""
        proj = self.call(
            RMS_GEMV_ROPE, layer, read=("q_roped", "k_roped", "v"), rope=rope_row, **residual
        )
        # The host appends this position's K/V to the device's cache and hands the
        # attention its query rows and length; the attention runs in o_gemv_ffn.
        with self.profiler.cpu(flow.KV_APPEND, layer):
            self.kv.store(layer, pos, proj["k_roped"].host, proj["v"].host)
            query = self.buffers.input_buffer(self.spec(ffn), "query")
            heads = self.shape.n_kv_heads
            query.write_with(lambda rows: query_rows(proj["q_roped"].host, heads, pos + 1, rows))
        kv = self.kv.buffers[layer]
        out = self.call(ffn, layer, query=query, kv_cache=kv, x=proj["x"])
        return {"x": out["y"]} if "y" in out else {"d": out["d"], "h": out["h"]}

    # -- the shared tail: final norm on the CPU, LM head on the device ---------
    def _logits(self, parts: list[Buffer], row: int) -> np.ndarray:
        """The logits of hidden-state row `row`, the sum of `parts` (y alone, or the
        last decode layer's d and h: the residual add no launch after it does)."""
        with self.profiler.cpu(flow.FINAL_RMS_NORM):  # includes reading the rows back
            hidden = sum(part.read_rows(row, row + 1) for part in parts)
            normed = final_norm(hidden, self._final_norm, self.shape.rms_eps)
        out = self.call(LM_HEAD_GEMV, None, read=("logits",), x=normed)["logits"]
        return out.host.reshape(-1)[: self.shape.vocab].astype(np.float32)

    # -- generation ----------------------------------------------------------
    def generate(
        self,
        prompt: str | list[int],
        n_tokens: int,
        sampling: Sampling = GREEDY,
        seq_len: int | None = None,
        stop_ids: set[int] | None = None,
        on_logits: LogitsHook | None = None,
        reuse: bool = False,
    ) -> Iterator[int]:
        """Yield up to `n_tokens` new tokens; stops at end-of-turn / EOS (pass
        `stop_ids=set()` to always produce `n_tokens`). Choosing a token is timed as
        the CPU op `sample`, inside the phase that produced its logits. With `reuse`
        (chat, the server), the positions the cache holds that the prompt begins with
        are not computed again when that is cheaper (`_reuse`); without it (run,
        profile, verify), every prompt is prefilled whole, as measured."""
        if n_tokens < 1:
            raise UserError(f"--n-tokens must be at least 1, got {n_tokens}")
        stop_ids = self.checkpoint.stop_token_ids() if stop_ids is None else stop_ids
        rng = np.random.default_rng(sampling.seed)
        if not self.prepared:
            self.prepare()
        prof = self.profiler
        with prof.in_phase("prefill"):
            with prof.cpu(flow.TOKENIZE):
                ids = self.checkpoint.encode_prompt(prompt) if isinstance(prompt, str) else prompt
            ids, capacity = list(ids), len(ids) + n_tokens
            self.last_prompt_tokens = len(ids)
            self._check_context(len(ids), n_tokens)
            self.last_reused = 0
            if reuse and seq_len is None and self.slots is not None:
                self._switch_slot(self.slots, ids)
            reused = self._reuse(ids, capacity) if reuse and seq_len is None else None
            logits = self._prefill(ids, seq_len, capacity, None) if reused is None else reused
            token = self._choose(logits, sampling, rng, on_logits)
        log.debug(
            "prefill.done",
            prompt_tokens=len(ids),
            reused=self.last_reused,
            bucket=None if self.last_reused else self.last_prompt[1],
        )
        for step in range(n_tokens):
            log.debug("decode.token", step=step)  # not the token: logs keep no text
            if token in stop_ids:
                return
            yield token
            if step + 1 < n_tokens:
                with prof.in_phase("decode"), prof.span("token", self.position):
                    token = self._choose(self._decode(token), sampling, rng, on_logits)

    def _check_context(self, prompt: int, n_tokens: int) -> None:
        """Refuse before any work a generation the context cannot hold: the prompt and
        every new token but the last (which is produced, never fed back) take a position."""
        most = self.context
        if prompt + n_tokens - 1 > most:
            room = most - prompt + 1
            advice = f"ask for {room} tokens or fewer" if room > 0 else "shorten the prompt"
            raise UserError(
                f"the prompt's {prompt} tokens and {n_tokens} new ones need "
                f"{prompt + n_tokens - 1} positions; the context is {most} "
                f"({self._context_limit()}): {advice}"
            )

    def _context_limit(self) -> str:
        """What sets the context: the model's max_position_embeddings or, below it,
        the positions the compiled KV cache holds."""
        if self.context == self.shape.max_positions:
            return "max_position_embeddings"
        return (
            f"the KV cache the decode ELF was compiled with; the model's "
            f"max_position_embeddings is {self.shape.max_positions}"
        )

    def _choose(
        self,
        logits: np.ndarray,
        sampling: Sampling,
        rng: np.random.Generator,
        on_logits: LogitsHook | None,
    ) -> int:
        if on_logits is not None:
            on_logits(logits)
        with self.profiler.cpu(flow.SAMPLE):
            if not np.isfinite(logits).all():  # argmax of NaNs would be a silent token 0
                raise self.checkpoint.nonfinite_output_error()
            return sample(logits, sampling, rng)

    def close(self) -> None:
        self.device.close()
        if self._pin is not None:
            self._pin.unlink(missing_ok=True)


# The compiler suggests powers of two from 64 up (its buckets are multiples of
# abi.BUCKET_MULTIPLE).
MIN_BUCKET = 64


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _with(buckets: tuple[int, ...], extra: int) -> str:
    """The bucket list a user should compile to add `extra` and keep the others."""
    return ",".join(map(str, sorted({*buckets, extra})))


def _pad_token(config: dict[str, Any]) -> int:
    """What fills a prompt up to its bucket: EOS as in the seed (any id works,
    attention is causal and the padded rows are never read)."""
    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    return eos if isinstance(eos, int) else 0


def open_session(
    args: argparse.Namespace, profiler: Profiler | None = None, prepare: bool = True
) -> Session:
    """What a command's flags (--device, --artifacts, --model) name -> a Session,
    prepared unless `prepare` is false (use it in a `with` block: closing it releases
    the device). The device is opened first ("no NPU here" is
    the news, not "no artifacts for npu2"), then the artifacts are found, so a
    missing build fails at once rather than after the model is made ready."""
    device = open_device(args.device)
    try:
        where = _artifacts_dir(args, device.targets)
        manifest = find_manifest(where, device.targets, paths.artifact_homes())
        checkpoint = Checkpoint(resolve_model(args.model, paths.models_dir()))
        artifacts = ArtifactSet.open(manifest).for_model(checkpoint.shape, checkpoint.name)
        session = Session(checkpoint, artifacts, device, profiler)
        if prepare:
            session.prepare()
    except BaseException:
        device.close()
        raise
    return session


def session_on(
    device_name: str,
    checkpoint: Checkpoint,
    artifacts: ArtifactSet,
    observer: CallObserver | None = None,
) -> Session:
    """A Session on the device called `device_name`, opened here and closed with the
    session (not prepared yet)."""
    device = open_device(device_name)
    try:
        return Session(checkpoint, artifacts, device, observer=observer)
    except BaseException:
        device.close()
        raise


def _artifacts_dir(args: argparse.Namespace, targets: tuple[str, ...]) -> Path | None:
    """What --artifacts names: a directory (a build, an unpacked bundle), a bundle
    archive, or a bundle in a registry (HOST/REPO:TAG or @sha256:..., pulled on first
    use); archives and pulled bundles pass --sha256 and the signature policy first."""
    text = args.artifacts
    path = Path(text).expanduser() if text is not None else None
    if path is not None and path.is_file() and path.name != "manifest.json":
        return open_local(path, targets, args)
    if path is not None and not path.exists():
        reference = Reference.parse(text)
        if reference is None:
            raise UserError(
                f"--artifacts {text}: no such file or directory, nor a registry "
                "reference (HOST[:PORT]/REPO:TAG or HOST[:PORT]/REPO@sha256:DIGEST)."
            )
        return open_pulled(reference, targets, args)
    if args.sha256 is not None:
        where = f"--artifacts {text} is a directory" if text else "no --artifacts is given"
        raise UserError(f"--sha256 checks a bundle archive or a registry reference, and {where}: "
                        "pass the bundle itself (--artifacts BUNDLE.tar.gz).")  # fmt: skip
    return path
