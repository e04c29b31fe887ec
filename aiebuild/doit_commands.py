"""`doit run` as this project's users type it (registered in pyproject.toml under
[tool.doit.plugins.command], in place of doit's own `run`).

doit parses its `run` command's options before it reads dodo.py, so `doit run
--prompt Hi` (the generation task takes --prompt, doit's `run` does not) and a
misspelled task option ended in a dump of doit's option objects. Here options
that doit's `run` does not know go to the default task (`generate`), and an
unknown option is one line that names it and lists the valid ones.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from doit.cmd_run import Run as DoitRun
from doit.cmdparse import CmdParseError

DEFAULT_TASK = "generate"
# doit 0.37's getopt failure: "Error parsing <Task|Command>: <what> (parsing options:
# [CmdOption({... 'long':'<name>' }), ...]). Got: [...]"
_PARSE_ERROR = re.compile(r"Error parsing (Task|Command): (.*?) \(parsing options: (.*)\)\. Got:")
_LONG = re.compile(r"'long':'([^']+)'")
_OPTION = re.compile(r"option (--?[\w-]+)")


class Run(DoitRun):
    def parse_execute(self, in_args: Sequence[str]):
        args = list(in_args)
        if args and args[0].startswith("--") and not self._knows(args[0]):
            args = [DEFAULT_TASK, *args]  # `doit run --prompt Hi` = `doit generate --prompt Hi`
        try:
            return super().parse_execute(args)
        except CmdParseError as exc:
            raise CmdParseError(readable(str(exc), args)) from None

    def _knows(self, arg: str) -> bool:
        name = arg[2:].split("=", 1)[0]
        return any(option.long == name for option in self.cmdparser.options)


def readable(message: str, args: Sequence[str]) -> str:
    """doit's option error as: what was wrong, for which task, the valid options."""
    match = _PARSE_ERROR.search(message)
    if match is None:
        return message
    kind, what, options = match.groups()
    valid = [f"--{name}" for name in _LONG.findall(options)]
    bad = _OPTION.search(what)
    where = f"task {_task_before(args, bad.group(1))}" if kind == "Task" and bad else "doit run"
    hint = ""
    if bad and (close := difflib.get_close_matches(bad.group(1), valid, n=1)):
        hint = f" Did you mean {close[0]}?"
    return (
        f"{where}: {what}.{hint} Valid options: {', '.join(valid) or 'none'} "
        f"(`doit help {DEFAULT_TASK}` describes the task options; build choices are "
        "variables: `doit compile model=DIR buckets=64,256 target=emu`)."
    )


def _task_before(args: Sequence[str], option: str) -> str:
    """The task name the misspelled option followed on the command line."""
    seen = list(args[: args.index(option)]) if option in args else list(args)
    for index in range(len(seen) - 1, -1, -1):
        token, before = seen[index], seen[index - 1] if index else ""
        is_value = before.startswith("-") and "=" not in before  # `--prompt Hi`: Hi
        if not token.startswith("-") and "=" not in token and not is_value:
            return token
    return DEFAULT_TASK
