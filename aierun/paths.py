"""Where the runtime keeps its files.

`$AIERUN_HOME` (default `~/.cache/aierun`) holds models/, targets/, cache/,
bundles/ and logs/. The build system uses the checkout's `build/` as this home,
so a build directory is also a valid runtime home.
"""

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("AIERUN_HOME") or Path.home() / ".cache" / "aierun")


def models_dir() -> Path:
    return home() / "models"


def logs_dir() -> Path:
    return home() / "logs"
