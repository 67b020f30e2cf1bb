"""Build the on-device models: LiteRT files, their initial weights and the manifest, into agent/train/models/.

Needs tensorflow-cpu, which the device never installs; run it in a separate venv:

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy
    /tmp/tfvenv/bin/python scripts/build_models.py

Every model is a dense chain trained by plain SGD, converted with TFLITE_BUILTINS only and resource
variables, because the pip runtime has no Flex delegate (see shared/notes/litert-training.md):
ReLU is tf.maximum(x, 0), the update is v.assign_sub(lr * g) inside `train`, and the weights are not
in the .tflite file: `restore` writes them all, `parameters` reads them all.

Signatures (tensor names are the manifest's `tensors[*].name`):
    train(x, y, lr) -> {loss}      one SGD step on the batch; loss before the step
    infer(x)        -> {out}       softmax probabilities (classifier) or reconstruction (autoencoder)
    parameters()    -> {w0, b0, ...}
    restore(w0, b0, ...) -> {ok}   ok = 1

Initial weights come from one seeded generator at full width; a narrower model starts from the
leading slices of the full one (HeteroFL), so all widths share one starting point.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from agent.train import features, submodel, weights  # noqa: E402  (pure numpy modules)

OUT = ROOT / "agent" / "train" / "models"
SEED = 20261127

#: name -> (layer sizes input..output, index of hidden layers scaled by width, hidden activation, head, loss)
ARCHS = {
    # windowed telemetry features -> activity class
    "activity": {"layers": [features.N_FEATURES, 32, 32, len(features.ACTIVITIES)], "head": "softmax",
                 "loss": "cross_entropy"},
    # autoencoder over the same features; reconstruction error is the anomaly score
    "anomaly": {"layers": [features.N_FEATURES, 32, 8, 32, features.N_FEATURES], "head": "linear",
                "loss": "mse"},
}


def layer_sizes(full: list[int], ratio: float) -> list[int]:
    """Input and output stay; every hidden layer keeps ceil(ratio * C) units."""
    return [full[0]] + [submodel.units(c, ratio) for c in full[1:-1]] + [full[-1]]


def initial_full(full: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """He-uniform kernels (ReLU layers), Glorot-uniform for the head; zero biases."""
    out = []
    for i, (n_in, n_out) in enumerate(zip(full[:-1], full[1:])):
        last = i == len(full) - 2
        limit = np.sqrt(6.0 / (n_in + n_out)) if last else np.sqrt(6.0 / n_in)
        out.append(rng.uniform(-limit, limit, size=(n_in, n_out)).astype(np.float32))
        out.append(np.zeros(n_out, np.float32))
    return out


def tensor_names(n_layers: int) -> list[str]:
    return [f"{k}{i}" for i in range(n_layers) for k in ("w", "b")]


def build_module(tf, sizes: list[int], head: str, loss: str):
    n_layers = len(sizes) - 1
    names = tensor_names(n_layers)
    shapes = [s for a, b in zip(sizes[:-1], sizes[1:]) for s in ((a, b), (b,))]
    y_spec = (tf.TensorSpec([None], tf.int32, name="y") if loss == "cross_entropy"
              else tf.TensorSpec([None, sizes[-1]], tf.float32, name="y"))

    class Net(tf.Module):
        def __init__(self):
            super().__init__()
            self.vars = [tf.Variable(tf.zeros(s), name=n) for n, s in zip(names, shapes)]

        def forward(self, x):
            h = x
            for i in range(n_layers):
                h = tf.matmul(h, self.vars[2 * i]) + self.vars[2 * i + 1]
                if i < n_layers - 1:
                    h = tf.maximum(h, 0.0)   # not tf.nn.relu: ReluGrad needs Flex
            return h

        def loss_of(self, x, y):
            # The loss's gradient is written out: autodiff of a product of two [batch, k] tensors emits
            # BroadcastGradientArgs (dynamic batch), which is a Flex op.
            target = tf.one_hot(y, sizes[-1]) if loss == "cross_entropy" else y
            n = tf.cast(tf.shape(x)[0], tf.float32)

            @tf.custom_gradient
            def head_loss(z):
                if loss == "cross_entropy":
                    value = -tf.reduce_sum(target * tf.nn.log_softmax(z)) / n
                    dz = (tf.nn.softmax(z) - target) / n
                else:
                    diff = z - target
                    value = tf.reduce_sum(diff * diff) / (n * sizes[-1])
                    dz = 2.0 * diff / (n * sizes[-1])
                return value, lambda up: up * dz

            return head_loss(self.forward(x))

        @tf.function(input_signature=[tf.TensorSpec([None, sizes[0]], tf.float32, name="x"), y_spec,
                                      tf.TensorSpec([], tf.float32, name="lr")])
        def train(self, x, y, lr):
            with tf.GradientTape() as tape:
                value = self.loss_of(x, y)
            grads = tape.gradient(value, self.vars)
            for v, g in zip(self.vars, grads):
                v.assign_sub(lr * g)
            return {"loss": value}

        @tf.function(input_signature=[tf.TensorSpec([None, sizes[0]], tf.float32, name="x")])
        def infer(self, x):
            z = self.forward(x)
            return {"out": tf.nn.softmax(z) if head == "softmax" else z}

        @tf.function(input_signature=[])
        def parameters(self):
            return {n: tf.identity(v) for n, v in zip(names, self.vars)}

        @tf.function(input_signature=[tf.TensorSpec(s, tf.float32, name=n) for n, s in zip(names, shapes)])
        def restore(self, *tensors):
            for v, t in zip(self.vars, tensors):
                v.assign(t)
            return {"ok": tf.constant(1, tf.int32)}

    return Net(), names, shapes


def convert(tf, module) -> bytes:
    sigs = {k: getattr(module, k).get_concrete_function() for k in ("train", "infer", "parameters", "restore")}
    with tempfile.TemporaryDirectory() as d:
        tf.saved_model.save(module, d, signatures=sigs)
        conv = tf.lite.TFLiteConverter.from_saved_model(d, signature_keys=list(sigs))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        conv.experimental_enable_resource_variables = True
        return conv.convert()


def width_tag(ratio: float) -> str:
    return f"{ratio:g}"


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*"):
        if old.suffix in (".tflite", ".weights", ".json"):
            old.unlink()
    rng = np.random.default_rng(SEED)
    manifest = {"version": 1, "seed": SEED, "builder": f"tensorflow {tf.__version__}", "models": {}}
    for name, arch in ARCHS.items():
        full_sizes = arch["layers"]
        full_init = initial_full(full_sizes, rng)
        for ratio in submodel.WIDTHS:
            sizes = layer_sizes(full_sizes, ratio)
            module, names, shapes = build_module(tf, sizes, arch["head"], arch["loss"])
            init = submodel.slice_weights(full_init, shapes)
            base = f"{name}-w{width_tag(ratio)}"
            tflite, wbytes = convert(tf, module), weights.encode(init)
            (OUT / f"{base}.tflite").write_bytes(tflite)
            (OUT / f"{base}.weights").write_bytes(wbytes)
            manifest["models"][base] = {
                "name": name,
                "width": ratio,
                "architecture": {"kind": "mlp", "layers": sizes, "full_layers": full_sizes,
                                 "hidden_activation": "relu", "head": arch["head"], "loss": arch["loss"],
                                 "optimizer": "sgd"},
                "signatures": {
                    "train": {"inputs": {"x": ["batch", sizes[0]],
                                         "y": ["batch"] if arch["loss"] == "cross_entropy" else ["batch", sizes[-1]],
                                         "lr": []},
                              "outputs": {"loss": []}},
                    "infer": {"inputs": {"x": ["batch", sizes[0]]}, "outputs": {"out": ["batch", sizes[-1]]}},
                    "parameters": {"inputs": {}, "outputs": {n: list(s) for n, s in zip(names, shapes)}},
                    "restore": {"inputs": {n: list(s) for n, s in zip(names, shapes)}, "outputs": {"ok": []}},
                },
                "input_shape": ["batch", sizes[0]],
                "output_shape": ["batch", sizes[-1]],
                "tensors": [{"name": n, "shape": list(s)} for n, s in zip(names, shapes)],
                "parameter_count": int(sum(np.prod(s) for s in shapes)),
                "files": {
                    "model": {"path": f"{base}.tflite", "sha256": hashlib.sha256(tflite).hexdigest(),
                              "size": len(tflite)},
                    "weights": {"path": f"{base}.weights", "sha256": hashlib.sha256(wbytes).hexdigest(),
                                "size": len(wbytes)},
                },
            }
            print(f"{base}: layers {sizes}, {manifest['models'][base]['parameter_count']} parameters, "
                  f"{len(tflite)} B model")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
