"""The one door to LiteRT: a verified model file in an interpreter, with train/infer/parameters/restore.

`ai-edge-litert` is the runtime, except on aarch64, where its train signature segfaults and
`tflite-runtime` 2.14 is installed instead (pyproject.toml; docs/qemu.md). tflite-runtime's wheels
are built against numpy 1.x (they fail to create an interpreter under numpy 2), and its aarch64
library switches the whole process to flush-to-zero when it loads; ``_default_fp_env`` undoes that.
The pip runtimes have no Flex delegate, so the models use builtin ops only (scripts/build_models.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from . import weights as weights_codec
from .errors import RuntimeMissing, WeightsError
from .manifest import MODELS_DIR, ModelSpec, spec_for, verified_bytes



def _default_fp_env() -> None:
    """Restore the C default floating-point environment (glibc's fesetenv(FE_DFL_ENV)).

    tflite-runtime's aarch64 library is built with -ffast-math, whose start-up code sets the FPCR's
    flush-to-zero bit for the whole process: every later float operation, numpy's included, would
    turn subnormal numbers into zero. Training does not need it (same losses either way).
    """
    import ctypes

    try:
        ctypes.CDLL("libm.so.6").fesetenv(ctypes.c_void_p(-1))   # FE_DFL_ENV is ((const fenv_t *) -1)
    except (OSError, AttributeError):
        pass   # not glibc: nothing we know how to restore


try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # aarch64: ai-edge-litert's train signature segfaults there (docs/qemu.md), tflite-runtime's works
    try:
        from tflite_runtime.interpreter import Interpreter
        _default_fp_env()
    except ImportError:
        Interpreter = None


class Model:
    """A model at one width in a LiteRT interpreter. Not thread-safe: one user at a time."""

    def __init__(self, spec: ModelSpec, interpreter: object) -> None:
        self.spec = spec
        self._interp = interpreter
        self._train = interpreter.get_signature_runner("train")
        self._infer = interpreter.get_signature_runner("infer")
        self._params = interpreter.get_signature_runner("parameters")
        self._restore = interpreter.get_signature_runner("restore")

    @classmethod
    def load(cls, name: str, width: float = 1.0, *, models_dir: Path = MODELS_DIR,
             num_threads: int | None = None) -> "Model":
        """The manifest's `name` at `width` with its initial weights restored.

        The model and weights files' sha256 are checked against the manifest before an interpreter
        exists. Raises ModelRejected (unknown model, missing file, hash mismatch), WeightsError,
        RuntimeMissing.
        """
        spec = spec_for(name, width, models_dir)
        content = verified_bytes(spec, "model", models_dir)
        init = weights_codec.decode(verified_bytes(spec, "weights", models_dir), spec.tensor_shapes)
        if Interpreter is None:
            raise RuntimeMissing("no LiteRT runtime: install ai-edge-litert (or tflite-runtime with numpy<2)")
        interp = Interpreter(model_content=content, num_threads=num_threads)
        model = cls(spec, interp)
        # The .tflite file holds no weights: until restore, variables read back garbage.
        model.set_weights(init)
        return model

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One SGD step on the batch (x, y); returns the batch's loss before the step.

        y: class indices (int) for a cross-entropy model, targets shaped like the output for MSE.
        """
        x = self._check_x(x)
        y = (np.ascontiguousarray(y, dtype=np.int32) if self.spec.loss == "cross_entropy"
             else np.ascontiguousarray(y, dtype=np.float32))
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y has {y.shape[0]} rows, x has {x.shape[0]}")
        out = self._train(x=x, y=y, lr=np.float32(lr))
        return float(out["loss"])

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Softmax probabilities (classifier) or the reconstruction (autoencoder), one row per row of x."""
        return np.array(self._infer(x=self._check_x(x))["out"])

    def get_weights(self) -> list[np.ndarray]:
        """Copies of every weight tensor, in manifest order."""
        out = self._params()
        return [np.array(out[n], dtype=np.float32) for n in self.spec.tensor_names]

    def set_weights(self, tensors: Sequence[np.ndarray]) -> None:
        """Write every weight tensor (manifest order and shapes). Raises WeightsError on a mismatch."""
        if len(tensors) != len(self.spec.tensor_names):
            raise WeightsError(f"{len(tensors)} tensors for {len(self.spec.tensor_names)} in {self.spec.key}")
        weights_codec.check_shapes(tensors, self.spec.tensor_shapes)
        self._restore(**{n: np.ascontiguousarray(t, dtype=np.float32)
                         for n, t in zip(self.spec.tensor_names, tensors)})

    def _check_x(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.spec.layers[0] or x.shape[0] == 0:
            raise ValueError(f"x shape {x.shape}, expected (batch>0, {self.spec.layers[0]})")
        return x
