"""doit task generation: the model, one build task per ELF instance, the manifest.

dodo.py stays thin and delegates here. Every ELF task is up to date exactly when
the store holds a valid entry under its content key, so a no-op `doit compile`
only hashes specs and sources, and a changed spec or source rebuilds just the
ELFs whose key changed.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from doit.exceptions import InvalidCommand, InvalidTask, TaskFailed
from doit.reporter import ConsoleReporter

from aiebuild import placed
from aiebuild import weights as weight_choice
from aiebuild.array import rules
from aiebuild.npu2 import toolchain
from aiebuild.npu2.target import Npu2Target
from aiebuild.ops.common import KernelObject
from aiebuild.remote_cache import RemoteCache
from aiebuild.specs import DEFAULT_BUCKETS, model_specs
from aiebuild.store import Store
from aiebuild.targets import EmuTarget, Target, entry_key, plan_bytes
from aierun import ARTIFACT_SCHEMA, default_model
from aierun.abi import WALK, ElfSpec, canonical_json
from aierun.artifacts import MANIFEST, SIDE_BY_SIDE
from aierun.errors import UserError, describe, os_error_message
from aierun.files import remove_stale_temporaries, sha256_text, write_json_atomic
from aierun.model import Checkpoint, ModelShape, read_shape, resolve_model

log = structlog.get_logger("aiebuild.compile")


@dataclass(frozen=True)
class BuildConfig:
    home: Path  # the checkout's build/
    model: str | None  # None: the embedded default model
    buckets: tuple[int, ...]
    target: str  # "auto", "emu" or "npu2"
    # The choices behind it (saved ones overridden by this run's variables), which a
    # compile remembers for later runs (`remember_task`).
    choices: dict[str, str] = field(default_factory=dict, compare=False)
    # `cache=HOST/REPO`: an OCI registry as a remote cache of entries (this run only).
    cache: str | None = None
    # `weights=`: the decode GEMVs' weight type (aiebuild/weights.py WEIGHT_TYPES), or
    # "gguf" (each matrix in its file's type); None: the model's default (gguf for a
    # GGUF file, else bf16).
    weights: str | None = None
    # `ctx=`: positions the device's KV cache holds (aiebuild/specs.py decode_context
    # when None), which bounds a prompt and its answer.
    context: int | None = None

    @classmethod
    def from_vars(cls, home: Path, get_var) -> BuildConfig:
        """The `doit ... model= buckets= target=` variables over the choices saved in
        build/config.json by an earlier doit (so a later plain `doit` keeps them;
        `model=default` etc. go back to the default). A compile remembers them
        (`remember_task`); other tasks (check, simulate) use them for this run only.
        A bad value stops doit with a one-line error (InvalidCommand), not a traceback."""
        saved = saved_choices(home)
        given = {name: get_var(name, None) for name in CHOICES}
        given = {name: value for name, value in given.items() if value is not None}
        choices = {**saved, **given}
        choices = {k: v for k, v in choices.items() if v not in ("", "default", "auto")}
        buckets = choices.get("buckets", "")
        try:
            parsed = tuple(int(b) for b in buckets.split(",") if b) or DEFAULT_BUCKETS
        except ValueError:
            message = f"buckets={buckets!r}: expected prefill lengths like buckets=64,256"
            raise InvalidCommand(message) from None
        if "model" in given and Path(given["model"]).expanduser().exists():
            choices["model"] = str(Path(given["model"]).expanduser().resolve())
        cache = get_var("cache", None) or None
        if cache is not None:
            try:
                RemoteCache.parse(cache)
            except UserError as exc:
                raise InvalidCommand(str(exc)) from None
        target = choices.get("target", "auto")
        weights = choices.get("weights")
        if weights not in (None, weight_choice.GGUF, *weight_choice.WEIGHT_TYPES):
            raise InvalidCommand(f"weights={weights}: expected gguf or one of "
                                 f"{', '.join(weight_choice.WEIGHT_TYPES)}")  # fmt: skip
        context = choices.get("ctx")
        if context is not None and not context.isdigit():
            raise InvalidCommand(f"ctx={context}: expected a number of positions, like ctx=8192")
        context = int(context) if context is not None else None
        return cls(home, choices.get("model"), parsed, target, choices, cache, weights, context)

    def weight_types(self, shape: ModelShape) -> weight_choice.WeightTypes:
        """The decode GEMVs' type per matrix that `weights=` means at this model."""
        return weight_choice.choose(self.weights, self.model_dir(), shape)

    def remote_cache(self) -> RemoteCache | None:
        return RemoteCache.parse(self.cache) if self.cache else None

    def model_dir(self) -> Path:
        """The checkpoint: a directory or a model id from the local Hugging Face cache,
        else the embedded default model (made by the `model` task)."""
        if self.model:
            return resolve_model(self.model, self.home / "models")
        return self.home / "models" / default_model.NAME


# Build choices a doit run remembers for the next ones, in <build>/config.json.
CHOICES = ("model", "buckets", "target", "weights", "ctx")
CHOICES_FILE = "config.json"


def saved_choices(home: Path) -> dict[str, str]:
    """What an earlier `doit ... model= buckets= target=` chose; an unreadable file
    counts as no choice (it is rewritten at the next choice)."""
    path = home / CHOICES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("compile.choices_unreadable", path=str(path), reason=str(exc))
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: str(v) for k, v in data.items() if k in CHOICES}


def remember_task(config: BuildConfig) -> dict[str, Any]:
    """The compile's choices saved in build/config.json, so a later plain `doit` builds
    and runs the same model and buckets."""
    return {
        "name": "choices",
        "actions": [(_save_choices, (config.home, config.choices))],
        "uptodate": [lambda: saved_choices(config.home) == config.choices],
        "doc": f"remember the build choices in {config.home / CHOICES_FILE}",
        "verbosity": 2,
    }


def _save_choices(home: Path, choices: dict[str, str]) -> None:
    path = home / CHOICES_FILE
    try:
        write_json_atomic(path, choices)
    except OSError as exc:  # the build itself reports an unwritable build directory
        log.warning("compile.choices_not_saved", path=str(path), reason=str(exc))
        return
    shown = " ".join(f"{k}={v}" for k, v in sorted(choices.items())) or "the defaults"
    log.info("compile.choices_saved", choices=shown, path=str(path),
             note="later doit runs keep them; model=default / buckets=default go back")  # fmt: skip


def check_build_dir(build: Path) -> None:
    """Refuse at once (one line, no traceback) a build directory doit cannot write:
    it keeps its dependency database there, which doit would fail to open with a
    traceback before any task runs."""
    try:
        build.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=build):
            pass
    except OSError as exc:
        where = OSError(exc.errno, exc.strerror, str(build))
        raise InvalidCommand(f"build directory: {os_error_message(where)}") from None


def select_target(requested: str) -> str:
    """npu2 when an NPU toolchain is installed, else emu (said in one log line)."""
    if requested != "auto":
        if requested not in ("emu", "npu2"):
            raise UserError(f"target={requested!r}: choose emu, npu2 or auto")
        return requested
    found = toolchain.discover()
    if found.usable:
        log.info("compile.target", target="npu2", toolchain=found.reason)
        return "npu2"
    # One short line; `doit compile target=npu2` explains in full what is missing.
    log.info("compile.target", target="emu", reason=found.reason.split(":")[0].split(".")[0])
    return "emu"


def get_target(name: str, home: Path | None = None) -> Target:
    """The target called `name`; npu2 keeps its object cache and work directories
    in `home` (default: the runtime home)."""
    if name == "emu":
        return EmuTarget()
    if name == "npu2":
        return Npu2Target(home)
    raise ValueError(f"unknown target {name!r}: choose emu or npu2")


@dataclass(frozen=True)
class ElfBuild:
    spec: ElfSpec
    key: str


def plan(config: BuildConfig) -> tuple[Target, Store, ModelShape, list[ElfBuild]]:
    # npu2 keeps its object cache and work directories in the build home.
    target = get_target(select_target(config.target), config.home)
    shape = Checkpoint(config.model_dir()).shape
    specs = model_specs(shape, config.buckets, config.weight_types(shape), config.context)
    # Every target: an emu build also proves the npu2 designs legal, before any compile.
    placed.require_legal(specs)
    fingerprint = target.fingerprint()
    builds = [ElfBuild(s, entry_key(target, s, fingerprint)) for s in specs]
    return target, Store(config.home, target.name), shape, builds


def manifest_data(config: BuildConfig, target: str, shape: ModelShape, builds: list[ElfBuild]):
    return {
        "schema": ARTIFACT_SCHEMA,
        "target": target,
        "model": shape.to_json(),
        "model_name": config.model_dir().name,
        "buckets": sorted(config.buckets),
        "store": f"../../cache/{target}",
        "elfs": {b.spec.instance: b.key for b in builds},
        # One call of each ELF on npu2 as the time model gives it (aiebuild/placed.py),
        # for the runtime's profile report; beside the artifacts, not in them.
        "npu2_model": placed.npu2_model(b.spec for b in builds),
    }


def manifest_path(home: Path, target: str) -> Path:
    return home / "targets" / target / "manifest.json"


def build_elf(
    target: Target, store: Store, build: ElfBuild, cache: RemoteCache | None = None
) -> None:
    """Build one ELF into the store; with a remote cache, fetch it from there instead
    when it has it, and push it there when it had to be built here."""
    if cache is not None and cache.fetch(store, build.key, plan_bytes(build.spec)):
        return
    start = time.perf_counter()
    log.debug("compile.start", elf=build.spec.instance, key=build.key[:12], target=target.name)
    entry = target.build(build.spec, build.key, store)
    seconds = round(time.perf_counter() - start, 3)
    log.info("compile.finish", elf=build.spec.instance, key=build.key[:12], seconds=seconds)
    if cache is not None:
        cache.push(entry)


def failing_cleanly(function: Callable[..., Any], *args: Any) -> tuple:
    """A doit action whose user-caused failure (aierun.errors.describe) fails the task
    with its one-paragraph message instead of a traceback. A (callable, args) pair of
    module-level functions, so that `doit -n N` can hand it to another process."""
    return (_run_cleanly, (function, *args))


def _run_cleanly(function: Callable[..., Any], *args: Any) -> TaskFailed | None:
    try:
        function(*args)
    except Exception as exc:
        failure = describe(exc)
        if failure is None:  # a bug: doit shows its traceback
            raise
        return TaskFailed(failure.message or "")
    return None


@contextmanager
def failing_as_invalid_task() -> Iterator[None]:
    """Work done while doit makes the task list (no action runs it): a user-caused
    failure (a bad model, a full disk) becomes InvalidTask, which doit prints as one
    line without a traceback."""
    try:
        yield
    except Exception as exc:
        failure = describe(exc)
        if failure is None:  # a bug: doit shows its traceback
            raise
        raise InvalidTask(failure.message or str(exc)) from None


def compile_tasks(config: BuildConfig) -> Iterator[dict[str, Any]]:
    if config.model is None and not default_model.is_materialized(config.model_dir()):
        # Listed before the `model` task has made the default model (`doit list` on a
        # fresh clone): its ELFs are known only then, and `doit compile` makes it first.
        yield {"name": None, "doc": "build every ELF of the model (after `doit model`)"}
        return
    with failing_as_invalid_task():
        target, store, shape, builds = plan(config)
    if isinstance(target, Npu2Target):
        yield from object_tasks(target, store, builds)
    cache = config.remote_cache()
    for build in builds:
        yield {
            "name": build.spec.instance,
            "actions": [failing_cleanly(build_elf, target, store, build, cache)],
            "uptodate": [lambda key=build.key: store.is_valid(key)],
            "task_dep": _object_deps(target, build.spec),
            "doc": f"{build.spec.name} ({build.spec.phase}) for {target.name}",
            "verbosity": 2,
        }
    with failing_as_invalid_task():  # the time model builds the kernels it counts
        data = manifest_data(config, target.name, shape, builds)
    path = manifest_path(config.home, target.name)
    if cache is not None:
        yield {
            "name": "cache",
            "actions": [(cache.summary,)],
            "task_dep": [f"compile:{b.spec.instance}" for b in builds],
            "uptodate": [False],
            "doc": f"how many entries came from {cache.location}, and how many were built",
            "verbosity": 2,
        }
    yield remember_task(config)
    yield {
        "name": "manifest",
        "actions": [(write_manifest, (path, data))],
        "task_dep": ["compile:choices", *(f"compile:{b.spec.instance}" for b in builds)],
        "targets": [str(path)],
        "uptodate": [lambda: _read_json(path) == data],
        "doc": "target manifest: ELF name -> content key for this model shape",
        "verbosity": 2,
    }


def object_tasks(
    target: Npu2Target, store: Store, builds: list[ElfBuild]
) -> Iterator[dict[str, Any]]:
    """One task per kernel object (a source and its -D parameters), shared by every
    ELF that links it; up to date while the object cache holds it under its key, or
    while every ELF that links it is in the store (an ELF build compiles a missing
    object on demand, so a deleted object cache costs nothing until it is needed)."""
    users: dict[KernelObject, list[str]] = {}
    for build in builds:
        for obj in target.kernel_objects(build.spec):
            users.setdefault(obj, []).append(build.key)
    for obj, keys in sorted(users.items(), key=lambda item: item[0].name):
        yield {
            "name": _object_task(obj),
            "actions": [failing_cleanly(target.build_object, obj)],
            "uptodate": [
                lambda obj=obj, keys=keys: (
                    target.object_is_valid(obj) or all(store.is_valid(k) for k in keys)
                )
            ],
            "doc": f"Peano: {obj.source.name} {' '.join(obj.flags())}",
            "verbosity": 2,
        }


def _object_task(obj: KernelObject) -> str:
    return "obj-" + obj.name.removesuffix(".o")


def _object_deps(target: Target, spec: ElfSpec) -> list[str]:
    if not isinstance(target, Npu2Target):
        return []
    return [f"compile:{_object_task(obj)}" for obj in target.kernel_objects(spec)]


def write_manifest(path: Path, data: dict[str, Any]) -> None:
    """The target's manifest, and a copy kept beside it for this model (models/<name>/),
    which the runtime picks when it is given that model again: switching back to a
    model compiled before needs no compile. Temporaries of killed writers go too."""
    write_json_atomic(path, data)
    side = path.parent / SIDE_BY_SIDE / model_key(data) / MANIFEST
    write_json_atomic(side, {**data, "store": f"../../{data['store']}"})
    for written in (path, side):
        remove_stale_temporaries(written)
    log.info("compile.manifest", path=str(path), elfs=len(data["elfs"]), target=data["target"])


def model_key(data: dict[str, Any]) -> str:
    """A directory name per model: its name and a hash of its shape (two checkpoints
    may share a directory name)."""
    return f"{data['model_name']}-{sha256_text(canonical_json(data['model']))[:8]}"


def _read_json(path: Path) -> Any:
    """The manifest as written, or None when it is missing or unreadable (then it is
    simply written again)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def compile_all(config: BuildConfig) -> Path:
    """Build what is missing and write the manifest, without doit (tests, scripts)."""
    target, store, shape, builds = plan(config)
    cache = config.remote_cache()
    for build in builds:
        if not store.is_valid(build.key):
            build_elf(target, store, build, cache)
    if cache is not None:
        cache.summary()
    path = manifest_path(config.home, target.name)
    write_manifest(path, manifest_data(config, target.name, shape, builds))
    return path


def check_designs(config: BuildConfig) -> None:
    """`doit check`: record, place and check every launch of every ELF of the model
    against the NPU2 hardware rules (aiebuild/array/rules.py); print the per-ELF table and
    fail naming every violation."""
    shape = read_shape(config.model_dir())  # config.json alone: no weights needed
    specs = model_specs(shape, config.buckets, config.weight_types(shape), config.context)
    checks = placed.check_specs(specs)
    print(rules.table(checks))
    rules.refuse_violations(checks)
    print(f"PASS: every launch of the {len(specs)} ELFs is within the NPU2 limits above "
          "(the limit of each column in its header).")  # fmt: skip
    print()
    print(modeled_table(shape, specs))


def modeled_table(shape: ModelShape, specs: list[ElfSpec]) -> str:
    """Per ELF its modeled npu2 time (aiebuild/array/timing.py) and the slowest launch's
    bound; then per bucket a prompt's prefill and a decode token of the whole model."""
    times = {spec.instance: placed.elf_time(spec) for spec in specs}
    lines = [f"{'ELF':<22}  {'modeled npu2 ms':>15}  slowest launch: bound"]
    for name, elf in times.items():
        slowest = max(elf.launches, key=lambda launch: launch.seconds)
        lines.append(f"{name:<22}  {elf.ms:>15.3f}  {slowest.label}: {slowest.bound}")
    model = f"{shape.architecture}, {shape.n_layers} layers"
    whole = [s for s in specs if not s.params.get(WALK)]  # decode over the whole cache
    for bucket in sorted({spec.bucket for spec in specs if spec.bucket}):
        ms = {s.name: times[s.instance].ms for s in whole if s.bucket in (0, bucket)}
        phases = placed.phase_ms(ms, shape.n_layers)
        lines.append(
            f"{model}: prefill of {bucket} tokens "
            f"{phases['prefill']:.1f} ms modeled ({1e3 * bucket / phases['prefill']:.0f} tok/s); "
            f"decode {phases['decode']:.2f} ms per token ({1e3 / phases['decode']:.1f} tok/s)"
        )
    for spec in (s for s in specs if s.params.get(WALK)):
        ms = {s.name: times[s.instance].ms for s in whole if not s.bucket}
        decode = placed.decode_ms(ms | {spec.name: times[spec.instance].ms}, shape.n_layers)
        lines.append(
            f"{model}: decode below position {spec.params[WALK]} {decode:.2f} ms per token "
            f"({1e3 / decode:.1f} tok/s; {spec.instance})"
        )
    lines += _chunked_prefill_lines(shape, specs, {i: t.ms for i, t in times.items()})
    return "\n".join(lines)


def _chunked_prefill_lines(
    shape: ModelShape, specs: list[ElfSpec], ms: dict[str, float]
) -> list[str]:
    """The modeled prefill of prompts longer than the largest bucket: whole chunks of
    it, each later one attending to the cache (up to the KV cache's context)."""
    largest = max(spec.bucket for spec in specs)
    chunks = 1 + sum(
        1 for spec in specs if spec.bucket == largest and spec.launches[0].params.get("past")
    )
    lines = []
    for n in range(2, chunks + 1):
        each = placed.chunk_ms(ms, shape.n_layers, largest, n)
        total = sum(each) + ms["lm_head_gemv"]
        lines.append(
            f"{shape.architecture}, {shape.n_layers} layers: prefill of {n * largest} tokens "
            f"in {n} chunks of {largest} {total:.1f} ms modeled "
            f"({1e3 * n * largest / total:.0f} tok/s; chunks {' + '.join(f'{t:.1f}' for t in each)}"
            f" ms, LM head {ms['lm_head_gemv']:.1f} ms)"
        )
    return lines


class StderrReporter(ConsoleReporter):
    """doit's console reporter on stderr, so stdout carries only results (the
    generated text, a report, a bundle path); up-to-date tasks are not listed
    (`doit list --status` shows them)."""

    def __init__(self, outstream, options):
        super().__init__(sys.stderr, options)

    def skip_uptodate(self, task) -> None:
        pass
