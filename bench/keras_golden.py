"""The tutorial's CancerNet semantics from TensorFlow/Keras itself, as a golden fixture.

Made once (`.venv-keras/bin/python bench/keras_golden.py`, TensorFlow from
bench/requirements-keras.txt) and committed as trainer/tests/data/keras_golden.json;
trainer/tests/keras.rs runs our CancerNet, loss, Adagrad and learning-rate decay on the same
numbers and compares.

The weights and the input batch are not stored: both sides compute them from one formula
(`value` below) over each tensor's flat index in burn's layout, so the fixture holds only what
Keras computed:

- the logits of a fixed batch in inference mode (BatchNorm's moving statistics) and in training
  mode (the batch's statistics);
- two training steps on that batch, class-weighted categorical cross-entropy (Keras' own loss
  with sample weights), Adagrad (initial accumulator 0.1, epsilon 1e-7) at a learning rate with
  the legacy decay lr / (1 + decay * step) (Keras 3 writes it as InverseTimeDecay with
  decay_steps 1): each step's loss, then two checksums of every tensor (BatchNorm's moving
  statistics included: momentum 0.99), and the inference-mode logits after the steps.

Keras computes in float64 (its float32 on the CPU, through oneDNN, is itself ~1e-4 away from the
exact values in training mode, 20 times further than ours): the fixture is the exact answer to
the float32 inputs, and the test's tolerance is our float32's error.

Dropout is 0 here (its random masks cannot match across frameworks); the tutorial's rates are
pinned by trainer/src/config/tests.rs. The decay is 0.5 instead of the tutorial's lr / epochs so
that getting it wrong moves the second step's weights by far more than float error.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import tensorflow as tf
import keras
from keras import layers

WIDTHS, DEPTHS, DENSE, SIDE, BATCH = [32, 64, 128], [1, 2, 3], 256, 48, 8
LABELS = [0, 1, 0, 0, 1, 0, 1, 1]
CLASS_WEIGHTS = [1.0, 2.5]
LR, DECAY, STEPS = 0.01, 0.5, 2
# The input batch's stream (the tensors' are their numbers in model order, from 0).
IMAGES = 1000


def splitmix64(x):
    """SplitMix64's output function, on uint64 arrays (wrapping, as Rust's wrapping_mul)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform(stream, n):
    """n numbers in [0, 1) from `stream`: the top 24 bits of SplitMix64 of (stream << 32) + i,
    exact in float32. Random-looking, so that no max-pool window holds a tie or a near-tie that
    float error could break either way (periodic values do, and their gradients then differ by
    whole positions)."""
    i = np.arange(n, dtype=np.uint64) + (np.uint64(stream) << np.uint64(32))
    return (splitmix64(i) >> np.uint64(40)).astype(np.float64) / 2.0**24


def value(tensor_id, shape, scale, offset=0.0):
    """The formula both sides share: uniform numbers mapped to [-1, 1), scaled (float64, then
    float32)."""
    v = 2.0 * uniform(tensor_id, int(np.prod(shape))) - 1.0
    return (offset + scale * v).astype(np.float32).reshape(shape)


def ours():
    """Every tensor in burn's layout, in the model's order: (name, array)."""
    tensors, k = [], 0

    def add(name, shape, scale, offset=0.0):
        nonlocal k
        tensors.append((name, value(k, shape, scale, offset)))
        k += 1

    def bn(name, c):
        add(f"{name}.gamma", [c], 0.2, 1.0)
        add(f"{name}.beta", [c], 0.1)
        add(f"{name}.running_mean", [c], 0.05)
        add(f"{name}.running_var", [c], 0.3, 1.0)

    c_in = 3
    for b, (w, d) in enumerate(zip(WIDTHS, DEPTHS)):
        for u in range(d):
            p = f"blocks.{b}.units.{u}"
            add(f"{p}.sepconv.depthwise.weight", [c_in, 1, 3, 3], 0.5)
            add(f"{p}.sepconv.pointwise.weight", [w, c_in, 1, 1], 1.5 / np.sqrt(c_in))
            add(f"{p}.sepconv.pointwise.bias", [w], 0.05)
            bn(f"{p}.bn", w)
            c_in = w
    side = SIDE // 2 ** len(WIDTHS)
    add("dense.weight", [c_in * side * side, DENSE], 1.5 / np.sqrt(c_in * side * side))
    add("dense.bias", [DENSE], 0.05)
    bn("dense_bn", DENSE)
    add("head.weight", [DENSE, 2], 1.5 / np.sqrt(DENSE))
    add("head.bias", [2], 0.05)
    return tensors, c_in, side


def images():
    """The batch, NCHW in [0, 1] (as our preprocessing gives), and NHWC for Keras."""
    x = uniform(IMAGES, BATCH * 3 * SIDE * SIDE).astype(np.float32).reshape(BATCH, 3, SIDE, SIDE)
    return x, np.transpose(x, (0, 2, 3, 1))


def keras_model():
    """The tutorial's CancerNet (channels last), layer for layer, dropout 0, the softmax apart
    so that the logits can be read."""
    x = inp = layers.Input((SIDE, SIDE, 3))
    for w, d in zip(WIDTHS, DEPTHS):
        for _ in range(d):
            x = layers.SeparableConv2D(w, (3, 3), padding="same", activation="relu")(x)
            x = layers.BatchNormalization(axis=-1)(x)
        x = layers.MaxPooling2D(pool_size=(2, 2))(x)
        x = layers.Dropout(0.0)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(DENSE, activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dropout(0.0)(x)
    logits = layers.Dense(2)(x)
    return keras.Model(inp, logits)


def to_keras(tensors, c_last, side):
    """Our tensors in the Keras layers' weight order and layouts."""
    t = dict(tensors)
    out = []
    c_in = 3
    for b, (w, d) in enumerate(zip(WIDTHS, DEPTHS)):
        for u in range(d):
            p = f"blocks.{b}.units.{u}"
            dw = t[f"{p}.sepconv.depthwise.weight"]  # [c, 1, kh, kw] -> [kh, kw, c, 1]
            pw = t[f"{p}.sepconv.pointwise.weight"]  # [o, i, 1, 1] -> [1, 1, i, o]
            out += [np.transpose(dw, (2, 3, 0, 1)), np.transpose(pw, (2, 3, 1, 0)), t[f"{p}.sepconv.pointwise.bias"]]
            out += [t[f"{p}.bn.{k}"] for k in ("gamma", "beta", "running_mean", "running_var")]
            c_in = w
    # Keras flattens (h, w, c), burn (c, h, w): the dense rows in Keras' order.
    dense = t["dense.weight"].reshape(c_last, side, side, DENSE).transpose(1, 2, 0, 3).reshape(-1, DENSE)
    out += [dense, t["dense.bias"]]
    out += [t[f"dense_bn.{k}"] for k in ("gamma", "beta", "running_mean", "running_var")]
    out += [t["head.weight"], t["head.bias"]]
    return out


def from_keras(weights, names, c_last, side):
    """The inverse of `to_keras`: Keras' weights as our named tensors."""
    out, it = {}, iter(weights)
    for b, (w, d) in enumerate(zip(WIDTHS, DEPTHS)):
        for u in range(d):
            p = f"blocks.{b}.units.{u}"
            out[f"{p}.sepconv.depthwise.weight"] = np.transpose(next(it), (2, 3, 0, 1))
            out[f"{p}.sepconv.pointwise.weight"] = np.transpose(next(it), (3, 2, 0, 1))
            out[f"{p}.sepconv.pointwise.bias"] = next(it)
            for k in ("gamma", "beta", "running_mean", "running_var"):
                out[f"{p}.bn.{k}"] = next(it)
    out["dense.weight"] = next(it).reshape(side, side, c_last, DENSE).transpose(2, 0, 1, 3).reshape(-1, DENSE)
    out["dense.bias"] = next(it)
    for k in ("gamma", "beta", "running_mean", "running_var"):
        out[f"dense_bn.{k}"] = next(it)
    out["head.weight"], out["head.bias"] = next(it), next(it)
    assert list(out) == names
    return out


def checksums(a):
    """Sum, and a sum weighted by position (catches a transposed or shuffled tensor)."""
    v = a.astype(np.float64).ravel()
    return [float(v.sum()), float((v * (1 + np.arange(v.size) % 7)).sum())]


def main(out_path):
    keras.utils.set_random_seed(0)
    keras.config.set_floatx("float64")
    tensors, c_last, side = ours()
    names = [n for n, _ in tensors]
    model = keras_model()

    def start():
        model.set_weights([w.astype(np.float64) for w in to_keras(tensors, c_last, side)])

    start()
    assert all(np.array_equal(a, b) for (_, a), b in zip(tensors, from_keras(model.get_weights(), names, c_last, side).values()))
    x = images()[1].astype(np.float64)
    onehot = tf.one_hot(LABELS, 2, dtype=tf.float64)
    sample_weight = tf.constant([CLASS_WEIGHTS[y] for y in LABELS], dtype=tf.float64)
    eval_logits = model(x, training=False).numpy()
    train_logits = model(x, training=True).numpy()
    # model(x, training=True) moved BatchNorm's moving statistics: start the steps from the
    # formula's again.
    start()
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)
    schedule = keras.optimizers.schedules.InverseTimeDecay(LR, decay_steps=1, decay_rate=DECAY)
    opt = keras.optimizers.Adagrad(learning_rate=schedule, initial_accumulator_value=0.1, epsilon=1e-7)
    losses = []
    for _ in range(STEPS):
        with tf.GradientTape() as tape:
            loss = loss_fn(onehot, model(x, training=True), sample_weight=sample_weight)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        losses.append(float(loss))
    after = from_keras(model.get_weights(), names, c_last, side)
    golden = {
        "made_by": f"bench/keras_golden.py, TensorFlow {tf.__version__}, Keras {keras.__version__}",
        "labels": LABELS,
        "class_weights": CLASS_WEIGHTS,
        "learning_rate": LR,
        "decay": DECAY,
        "eval_logits": eval_logits.tolist(),
        "train_logits": train_logits.tolist(),
        "losses": losses,
        "after_eval_logits": model(x, training=False).numpy().tolist(),
        "after_checksums": {n: checksums(a) for n, a in after.items()},
    }
    with open(out_path, "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(f"{out_path}: losses {losses}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "trainer/tests/data/keras_golden.json")
