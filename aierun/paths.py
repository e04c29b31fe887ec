"""Where the runtime keeps its files.

`$AIERUN_HOME` (default `~/.cache/aierun`) holds models/, targets/, cache/,
bundles/ and logs/. The build system uses the checkout's `build/` as this home,
so a build directory is also a valid runtime home: `aierun` run inside a checkout
finds the checkout's build/ (see `artifact_homes`).
"""

from __future__ import annotations

import os
from pathlib import Path

from aierun.errors import UserError

HOME_ENV = "AIERUN_HOME"
# What marks a checkout of this project (its build/ is doit's runtime home).
CHECKOUT_MARKERS = ("dodo.py", "aierun", "aiebuild")


def default_home() -> Path:
    return Path.home() / ".cache" / "aierun"


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or default_home())


def models_dir() -> Path:
    return home() / "models"


def logs_dir() -> Path:
    return home() / "logs"


def check_home() -> Path:
    """The runtime home, refused at once when it exists but is not a directory
    (everything under it would fail later, each time with a less clear error)."""
    path = home()
    if path.exists() and not path.is_dir():
        setting = f"{HOME_ENV}={path}" if os.environ.get(HOME_ENV) else f"the default home {path}"
        raise UserError(
            f"{setting} is a file, not a directory: point {HOME_ENV} to a directory "
            "(it is created if missing) or move the file away."
        )
    return path


def checkout_build(start: Path | None = None) -> Path | None:
    """The build/ of the project checkout that `start` (default: the current
    directory) is in, if any."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if all((directory / marker).exists() for marker in CHECKOUT_MARKERS):
            return directory / "build"
    return None


def artifact_homes() -> list[Path]:
    """Where to look for compiled artifacts when --artifacts is not given, in order:
    an explicitly set $AIERUN_HOME, the build/ of the checkout we are in (what
    `doit compile` wrote), then the default home."""
    homes = [home()] if os.environ.get(HOME_ENV) else []
    if (build := checkout_build()) is not None:
        homes.append(build)
    homes.append(default_home())
    return list(dict.fromkeys(homes))


def model_homes() -> list[Path]:
    """Runtime homes whose converted default model may be shared (it is the same
    bytes wherever it was made): the default home and this package's checkout."""
    homes = [default_home()]
    if (build := checkout_build(Path(__file__).parent)) is not None:
        homes.append(build)
    return homes
