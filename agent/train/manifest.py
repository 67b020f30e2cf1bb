"""The model manifest: what each shipped model is, and the sha256 its files must have.

`agent/train/models/manifest.json` is written by scripts/build_models.py. A model file is trusted
only through `verified_bytes`, which reads the file once and checks its hash, so the bytes that are
checked are the bytes that get used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelRejected

MODELS_DIR = Path(__file__).resolve().parent / "models"
MANIFEST = "manifest.json"
MAX_FILE = 8 * 1024 * 1024      # no shipped model comes near this; refuse before reading a huge file


@dataclass(frozen=True)
class ModelSpec:
    """One model at one width, as the manifest describes it."""

    key: str                                    # "<name>-w<width>", e.g. "activity-w0.5"
    name: str
    width: float
    layers: tuple[int, ...]                     # input, hidden..., output sizes at this width
    full_layers: tuple[int, ...]                # the same at width 1
    head: str                                   # "softmax" | "linear"
    loss: str                                   # "cross_entropy" | "mse"
    tensor_names: tuple[str, ...]
    tensor_shapes: tuple[tuple[int, ...], ...]
    parameter_count: int
    files: dict[str, dict[str, Any]]            # "model" | "weights" -> {path, sha256, size}
    signatures: dict[str, Any]


def model_key(name: str, width: float) -> str:
    return f"{name}-w{width:g}"


def load_manifest(models_dir: Path = MODELS_DIR) -> dict[str, ModelSpec]:
    """Every model in the directory's manifest, by key. Raises ModelRejected if the manifest is unreadable."""
    path = Path(models_dir) / MANIFEST
    try:
        doc = json.loads(path.read_text())
        out = {}
        for key, m in doc["models"].items():
            arch = m["architecture"]
            out[key] = ModelSpec(
                key=key, name=m["name"], width=float(m["width"]), layers=tuple(arch["layers"]),
                full_layers=tuple(arch["full_layers"]), head=arch["head"], loss=arch["loss"],
                tensor_names=tuple(t["name"] for t in m["tensors"]),
                tensor_shapes=tuple(tuple(t["shape"]) for t in m["tensors"]),
                parameter_count=int(m["parameter_count"]), files=m["files"], signatures=m["signatures"])
        return out
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelRejected("*", f"manifest {path} unusable: {e!r}") from None


def spec_for(name: str, width: float, models_dir: Path = MODELS_DIR) -> ModelSpec:
    """The manifest entry of `name` at `width`. Raises ModelRejected if there is none."""
    key = model_key(name, width)
    spec = load_manifest(models_dir).get(key)
    if spec is None:
        raise ModelRejected(key, "not in the manifest")
    return spec


def verified_bytes(spec: ModelSpec, kind: str, models_dir: Path = MODELS_DIR) -> bytes:
    """The content of the spec's `kind` file ("model" or "weights") after checking its sha256.

    Raises ModelRejected if the file is missing, too large, or its hash is not the manifest's.
    """
    entry = spec.files[kind]
    path = Path(models_dir) / entry["path"]
    try:
        if path.stat().st_size > MAX_FILE:
            raise ModelRejected(spec.key, f"{kind} file {path.name} larger than {MAX_FILE} B")
        data = path.read_bytes()
    except OSError as e:
        raise ModelRejected(spec.key, f"{kind} file unreadable: {e.strerror}") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ModelRejected(spec.key, f"{kind} file {path.name} sha256 not in the manifest")
    return data
