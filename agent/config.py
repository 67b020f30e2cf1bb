"""Configuration: the only module that reads the environment (and, later, board TOML files).

Defaults match a device: the secure world's socket under /run/aitn, normal-world state under
/var/lib/aitn. ``AITN_HOME`` and ``AITN_TEE`` override them (make run and the tests use that).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = "/var/lib/aitn"
DEFAULT_TEE = "unix:///run/aitn/tee.sock"


@dataclass(frozen=True)
class Globals:
    home: Path
    tee: str
    timeout: float = 10.0


def env_defaults(environ: dict[str, str] | None = None) -> tuple[str, str]:
    env = os.environ if environ is None else environ
    return env.get("AITN_HOME", DEFAULT_HOME), env.get("AITN_TEE", DEFAULT_TEE)
