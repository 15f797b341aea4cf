"""Reference checks of an exported ONNX file, run by the exporter tests from the project's venv.

Usage: check_model.py MODEL.onnx INPUT.f32 N SIZE
Validates MODEL with onnx.checker.check_model(full_check=True), runs INPUT (N x 3 x SIZE x SIZE
little-endian float32) through Python onnxruntime, and prints the IDC probabilities, one a line.
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
(probs,) = session.run(["probabilities"], {"image": x})
for p in probs[:, 1]:
    print(repr(float(p)))
