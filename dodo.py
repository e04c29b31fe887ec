"""doit tasks: `doit compile|generate|serve|profile|verify|diagnosis|simulate|model|pack|push|
unpack|cache|bench`.

Thin on purpose: the build logic lives in aiebuild, the runtime in aierun. doit
works in the checkout's build/, which is also the runtime's home (models, target
manifests, the artifact store, logs). Build options are doit variables
(`doit compile target=emu buckets=64,256 model=DIR`); run options are task
parameters (`doit generate --prompt "..." --n-tokens 30`).
"""

import os
import sys
from pathlib import Path

from doit import create_after, get_var
from doit.action import CmdAction
from doit.exceptions import TaskFailed

ROOT = Path(__file__).resolve().parent
BUILD = Path(os.environ.get("AIE_BUILD_DIR") or ROOT / "build")  # tests build elsewhere
os.environ["AIERUN_HOME"] = str(BUILD)

from aiebuild import bundle, cache_command, push, tasks  # noqa: E402  (after AIERUN_HOME is set)
from aierun import cli, default_model, logs  # noqa: E402
from aierun.errors import EXIT_BROKEN_PIPE  # noqa: E402

DOIT_CONFIG = {
    # `run` is doit's own command name, so the generation task is `generate` and is
    # the default: `doit`, `doit run` and `doit generate --prompt ...` all generate.
    "default_tasks": ["generate"],
    "dep_file": str(BUILD / ".doit.db"),
    "backend": "sqlite3",  # aiebuild/doit_db.py replaces it (pyproject.toml)
    "verbosity": 2,
    "reporter": tasks.StderrReporter,
}
tasks.check_build_dir(BUILD)  # a read-only or misplaced build/ is one line, not a traceback
logs.configure(BUILD / "logs")
CONFIG = tasks.BuildConfig.from_vars(BUILD, get_var)


def task_model():
    """Make the embedded default model's directory (SmolLM2-135M-Instruct, read from its GGUF)."""
    if CONFIG.model:  # the user's own checkpoint: nothing to make
        return {"actions": [], "uptodate": [True]}
    target = BUILD / "models" / default_model.NAME
    return {
        "actions": [tasks.failing_cleanly(default_model.materialize, target)],
        "targets": [str(target / name) for name in default_model.CHECKPOINT_FILES],
        "uptodate": [lambda: default_model.is_materialized(target)],
    }


@create_after(executed="model")
def task_compile():
    """Build every ELF of the model for the target (npu2 with a toolchain, else emu)."""
    yield from tasks.compile_tasks(CONFIG)


def task_check():
    """Check every npu2 design of the model against the NPU2 hardware rules (table per ELF)."""
    return {
        "actions": [tasks.failing_cleanly(tasks.check_designs, CONFIG)],
        "task_dep": ["model"],
        "uptodate": [False],
        "verbosity": 2,
    }


def _runtime_task(command: str, extra: tuple[str, ...] = (), build: bool = True) -> dict:
    """`aierun <command>` as a doit task, taking the same options as parameters;
    `extra` flags follow them; `build`: it runs the compiled ELFs (compile first)."""
    params = cli.doit_params(command)

    def action(**values):
        argv = [command, *cli.flags_from_params(values, params), *extra]
        if CONFIG.model:
            argv += ["--model", CONFIG.model]
        try:
            code = cli.main(argv)  # it has printed what went wrong
        except SystemExit as exit_:  # a flag argparse refused (usage printed)
            code = exit_.code
        if code == EXIT_BROKEN_PIPE:  # stdout's reader went away (`| head`): nothing to say
            return None
        return TaskFailed(f"aierun {command} exited with {code}") if code else None

    return {
        "actions": [(action,)],
        "params": params,
        "task_dep": ["compile"] if build else [],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_generate():
    """Generate text for --prompt, streamed to stdout (`doit run` and plain `doit` do this)."""
    return _runtime_task("run")


def task_serve():
    """Serve the model over OpenAI-compatible HTTP on 127.0.0.1:8000 (--port, --api-key, ...)."""
    return _runtime_task("serve")


def task_profile():
    """Run once, print the profile report, write JSON, trace, HTML; compare=A.json,B.json: two runs.

    The files go to build/profiles/; `doit profile compare=A.json,B.json` runs nothing: it
    sets two profile JSONs side by side (text and HTML there too)."""
    compare = get_var("compare", "")
    if compare:  # two profiles already written: nothing to compile or run
        return _runtime_task("profile", ("--compare", *compare.split(",")), build=False)
    return _runtime_task("profile")


def task_verify():
    """Top-k gate of our greedy tokens against Hugging Face transformers (fails on FAIL)."""
    return _runtime_task("verify")


def task_diagnosis():
    """Per-layer hidden-state comparison against transformers; names the first bad layer."""
    return _runtime_task("diagnosis")


def task_simulate():
    """Run every ELF through the dataflow model with the kernels compiled for this machine
    and compare with emu (`doit simulate buckets=64,256 elf=lm_head_gemv`; buckets
    default to 64); table on stdout, JSON under build/simulate/, fails beyond tolerance."""
    from aiebuild.sim import run  # needs a C++ compiler only when it runs

    buckets = CONFIG.buckets if get_var("buckets", "") else run.DEFAULT_BUCKETS
    context = CONFIG.context if get_var("ctx", "") else None  # `ctx=`: the decode walks too
    config = tasks.BuildConfig(CONFIG.home, CONFIG.model, buckets, "emu", weights=CONFIG.weights,
                               context=context)  # fmt: skip
    return {
        "actions": [(run.task_action, (config, get_var("elf", "")))],
        "task_dep": ["model"],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_pack():
    """Pack the compiled ELFs into build/bundles/<model>-<target>.tar.gz; prints its sha256
    and path (also in <bundle>.sha256); `doit pack sign=KEY` signs it (<bundle>.sig)."""
    return {
        "actions": [tasks.failing_cleanly(bundle.pack_build, CONFIG, get_var("sign", ""))],
        "task_dep": ["compile"],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_push():
    """Pack, then publish the bundle to an OCI registry (`doit push ref=HOST/REPO:TAG`);
    prints its reference by digest (HOST/REPO@sha256:...)."""
    return {
        "actions": [tasks.failing_cleanly(push.push_build, CONFIG, get_var("ref", ""))],
        "task_dep": ["pack"],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_unpack():
    """Check and unpack a bundle (`doit unpack bundle=PATH [sha256=HEX] [trust=FILE]
    [require_signed=1]`); prints the directory."""

    def action():
        if not get_var("bundle", ""):
            return TaskFailed("name the archive: doit unpack bundle=PATH")
        argv = ["unpack", get_var("bundle")]
        for name in ("sha256", "trust"):
            if get_var(name, ""):
                argv += [f"--{name}", get_var(name)]
        if get_var("require_signed", "0") not in ("", "0"):
            argv.append("--require-signed")
        code = cli.main(argv)
        return TaskFailed(f"aierun unpack exited with {code}") if code else None

    return {"actions": [action], "uptodate": [False], "verbosity": 2}


def task_cache():
    """List the artifact store per target; `doit cache gc=1` first removes unused entries."""
    return {
        "actions": [tasks.failing_cleanly(cache_command.command, BUILD, get_var("gc", "0"))],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_bench():
    """Host ops vs mlir-air's llama32_1b example and emu vs transformers, Llama-3.2-1B shapes
    (`doit bench parts=host,engines threads=1`); JSON under build/bench/."""
    command = [sys.executable, "-m", "tools.bench", "--parts", get_var("parts", "all")]
    command += ["--threads", get_var("threads", "1")]
    return {
        "actions": [CmdAction(command, cwd=ROOT, shell=False)],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_calibrate():
    """The npu2 time model against the published NPU2 measurements, and the modeled
    Llama-3.2-1B ELFs at seq_len 2048 beside mlir-air's measured example (`doit calibrate mma=bf16`,
    `doit calibrate json=PATH` to write the points, weights=q4_0 for quantized decode)."""
    command = [sys.executable, "-m", "tools.calibrate", "--llama"]
    if get_var("json", None):
        command += ["--json", get_var("json", None)]
    if get_var("mma", None):
        command += ["--mma", get_var("mma", None)]
    if get_var("weights", None):  # the decode GEMVs' weight type: weights=q4_0
        command += ["--weights", get_var("weights", None)]
    return {
        "actions": [CmdAction(command, cwd=ROOT, shell=False)],
        "uptodate": [False],
        "verbosity": 2,
    }
