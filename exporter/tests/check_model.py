"""Reference checks of an exported ONNX file, run by the exporter tests from the project's venv.

Usage: check_model.py MODEL.onnx INPUT.f32 N SIZE
Validates MODEL with onnx.checker.check_model(full_check=True), runs INPUT (N x 3 x SIZE x SIZE
little-endian float32) through Python onnxruntime, checks that the `logits` output's softmax is the
`probabilities` output, and prints the IDC probabilities, one a line.
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort

path, raw, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = onnx.load(path)
onnx.checker.check_model(model, full_check=True)
x = np.fromfile(raw, dtype="<f4").reshape(n, 3, size, size)
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
probs, logits = session.run(["probabilities", "logits"], {"image": x})
assert probs.shape == logits.shape == (n, 2), (probs.shape, logits.shape)
e = np.exp(logits - logits.max(axis=1, keepdims=True))
softmax = e / e.sum(axis=1, keepdims=True)
if not np.abs(softmax - probs).max() <= 1e-5:
    sys.exit(f"softmax(logits) differs from probabilities by {np.abs(softmax - probs).max()}")
for p in probs[:, 1]:
    print(repr(float(p)))
