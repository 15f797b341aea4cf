"""The tutorial's copy-based split (pyimagesearch's build_dataset.py), rewritten for the benchmark.

Lists every PNG under SOURCE, shuffles with Python's random.seed(42), takes 80% for training
(10% of that for validation) and 20% for testing, and copies each file with shutil.copy2 into
OUT/{training,validation,testing}/{0,1}. Usage: build_dataset_tutorial.py SOURCE OUT
"""
import os
import random
import shutil
import sys

source, out = sys.argv[1], sys.argv[2]
paths = []
for root, _dirs, files in os.walk(source):
    paths += [os.path.join(root, f) for f in files if f.endswith(".png")]
random.seed(42)
random.shuffle(paths)
i = int(len(paths) * 0.8)
train, test = paths[:i], paths[i:]
i = int(len(train) * 0.1)
val, train = train[:i], train[i:]
for split, items in (("training", train), ("validation", val), ("testing", test)):
    for p in items:
        name = os.path.basename(p)
        label = name[-5:-4]
        dst = os.path.join(out, split, label)
        os.makedirs(dst, exist_ok=True)
        shutil.copy2(p, os.path.join(dst, name))
print(f"{len(train)} training, {len(val)} validation, {len(test)} testing")
