"""The same evaluation job in Python, for `bench/runtime.sh`: Pillow decode + nearest resize to the
model's input, numpy scaling to [0, 1] NCHW, onnxruntime (CPU) in batches, over every PNG under DIR.

Usage: eval_python.py MODEL.onnx DIR [BATCH]
Prints decode-only, pure-inference and end-to-end images/s (one process, as a notebook runs it).
"""
import glob
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

model, root = sys.argv[1], sys.argv[2]
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 256
paths = sorted(glob.glob(os.path.join(root, "**", "*.png"), recursive=True))
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
size = session.get_inputs()[0].shape[2]


def load(chunk):
    images = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.NEAREST)) for p in chunk]
    return (np.stack(images).astype(np.float32) / 255.0).transpose(0, 3, 1, 2).copy()


t = time.perf_counter()
for i in range(0, len(paths), batch):
    load(paths[i : i + batch])
decode = len(paths) / (time.perf_counter() - t)

x = np.random.rand(batch, 3, size, size).astype(np.float32)
session.run(["probabilities"], {"image": x})
t, done = time.perf_counter(), 0
while done < max(len(paths), 4 * batch):
    session.run(["probabilities"], {"image": x})
    done += batch
infer = done / (time.perf_counter() - t)

t = time.perf_counter()
for i in range(0, len(paths), batch):
    session.run(["probabilities"], {"image": load(paths[i : i + batch])})
e2e = len(paths) / (time.perf_counter() - t)
print(f"python (Pillow + numpy + onnxruntime {ort.__version__}): {len(paths)} images, batch {batch}")
print(f"  decode + resize only          {decode:9.0f} img/s")
print(f"  pure inference (batch {batch:4d})   {infer:9.0f} img/s")
print(f"  end-to-end eval               {e2e:9.0f} img/s")
