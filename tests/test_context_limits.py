"""What a prompt and a generation may ask of the context and the compiled buckets:
refused before any work, with advice the compiler itself accepts."""

from __future__ import annotations

import pytest

from aierun.errors import UserError
from aierun.verify.gate import _answer


def test_more_new_tokens_than_the_context_holds_is_refused_before_any_work(session):
    # The test build's KV cache holds twice its largest bucket, less than the model's
    # context: that is the limit, and the message says both.
    most = session.context
    assert most == 2 * session.artifacts.buckets[-1] < session.shape.max_positions
    ids = session.checkpoint.encode_prompt("Hi")
    held = (list(session.tokens), session.position)
    limit = rf"the context is {most} \(the KV cache .* max_position_embeddings is "
    with pytest.raises(UserError, match=rf"need {len(ids) + 100_000 - 1} positions; {limit}"):
        next(session.generate(ids, 100_000))
    assert (session.tokens, session.position) == held  # nothing was prefilled
    # Exactly the context: the prompt and every new token but the last take a position.
    assert session._check_context(len(ids), most - len(ids) + 1) is None


def test_a_prompt_longer_than_the_context_says_so(session):
    most = session.shape.max_positions
    with pytest.raises(UserError, match=rf"more than the model's context of {most}"):
        session.bucket_for(most + 1)


def test_bucket_advice_is_only_what_the_compiler_accepts(session):
    with pytest.raises(UserError, match="a prefill bucket is a multiple of 32") as refused:
        session.bucket_for(2, seq_len=3)
    assert "doit compile" not in str(refused.value)
    largest = session.artifacts.buckets[-1]
    with pytest.raises(UserError, match=rf"doit compile buckets=\S*,{2 * largest}`"):
        session.bucket_for(largest + 1)  # the next power of two


def test_a_verify_sample_ends_at_its_end_of_turn(checkpoint):
    tokenizer = checkpoint.tokenizer
    stop = checkpoint.stop_token_ids()
    answer = tokenizer("Tokyo.", add_special_tokens=False)["input_ids"]
    shown = _answer([*answer, min(stop), *answer], tokenizer, stop)
    assert shown.startswith("'Tokyo.'")
    assert f"{len(answer)} more steps past it checked too" in shown


def test_a_larger_kv_cache_compiles_an_attention_elf_per_later_chunk(checkpoint):
    from aiebuild.specs import model_specs

    specs = model_specs(checkpoint.shape, (64, 128), "bf16", context=384)
    later = {spec.instance for spec in specs if spec.name.startswith("flash_attn_p")}
    # Chunks start at 128 and 256; a chunk's bucket must end within the cache.
    assert later == {"flash_attn_p128.s64", "flash_attn_p128.s128", "flash_attn_p256.s64",
                     "flash_attn_p256.s128"}  # fmt: skip
    decode = next(spec for spec in specs if spec.name == "o_gemv_ffn")
    assert decode.arg("kv_cache").shape[2] == 384


@pytest.mark.parametrize("context", [100, 64, 10**6])
def test_a_kv_cache_the_elfs_cannot_use_is_refused_naming_ctx(checkpoint, context):
    from aiebuild.specs import model_specs

    with pytest.raises(UserError, match=rf"ctx={context}: .* multiple of 32 from the largest"):
        model_specs(checkpoint.shape, (64, 128), "bf16", context=context)


def test_ctx_that_is_not_a_number_stops_doit_with_one_line(tmp_path):
    from doit.exceptions import InvalidCommand

    from aiebuild.tasks import BuildConfig

    with pytest.raises(InvalidCommand, match=r"ctx=lots: expected a number of positions"):
        BuildConfig.from_vars(tmp_path, {"ctx": "lots"}.get)
    assert BuildConfig.from_vars(tmp_path, {"ctx": "4096"}.get).context == 4096


def test_each_chunk_is_priced_with_its_own_attention_elf():
    """`doit check` prints a long prompt's modeled prefill per chunk: the first chunk's
    attention is flash_attn, a later one's the ELF after its past."""
    from aiebuild.placed import chunk_ms

    ms = {"rms_gemms_rope.s64": 1.0, "o_ffn.s64": 2.0, "flash_attn.s64": 0.5,
          "flash_attn_p64.s64": 0.75, "flash_attn_p128.s64": 1.25}  # fmt: skip
    assert chunk_ms(ms, 2, 64, 3) == [7.0, 7.5, 8.5]


def test_a_kv_cache_of_2048_positions_gets_decode_elfs_that_walk_its_first_512_and_1024(
    checkpoint,
):
    from aiebuild.specs import model_specs

    specs = model_specs(checkpoint.shape, (64,), "bf16", context=2048)
    walks = {s.instance: s.launches[0].params.get("walk") for s in specs if s.name == "o_gemv_ffn"}
    assert walks == {"o_gemv_ffn": None, "o_gemv_ffn.w512": 512, "o_gemv_ffn.w1024": 1024}


def test_early_steps_run_the_short_walk_and_generate_what_the_whole_walk_does(
    tmp_path, checkpoint, model_dir, monkeypatch
):
    """Decode at positions below 512 runs o_gemv_ffn.w512, whose attention streams only
    the cache's first 512 positions, and its tokens are the whole cache's."""
    from aiebuild.tasks import BuildConfig, compile_all
    from aierun.artifacts import ArtifactSet
    from aierun.devices.emu import EmuDevice
    from aierun.session import Session

    manifest = compile_all(BuildConfig(tmp_path, str(model_dir), (64,), "emu", context=1024))
    with Session(checkpoint, ArtifactSet.open(manifest), EmuDevice()) as session:
        session.prepare()
        # position p attends to p + 1 keys: the walk of 512 serves up to position 511
        assert [session._decode_ffn(p) for p in (0, 511, 512, 1023)] == [
            "o_gemv_ffn.w512", "o_gemv_ffn.w512", "o_gemv_ffn", "o_gemv_ffn"
        ]  # fmt: skip
        short = list(session.generate("What is the capital of Japan?", 6, stop_ids=set()))
        ran = {call.elf for call in session.profiler.kernels if call.phase == "decode"}
        assert "o_gemv_ffn.w512" in ran and "o_gemv_ffn" not in ran
        monkeypatch.setattr(Session, "_decode_ffn", lambda self, pos: "o_gemv_ffn")
        whole = list(session.generate("What is the capital of Japan?", 6, stop_ids=set()))
    assert short == whole
