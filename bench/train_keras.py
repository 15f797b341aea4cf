"""The tutorial's Keras side of the training-speed comparison (bench/peers.sh): CancerNet as the
tutorial writes it, trained (a) from in-memory tensors and (b) the tutorial's way, streaming
augmented PNGs from a folder with ImageDataGenerator.flow_from_directory. Batch 32, Adagrad.

Usage: train_keras.py DATA_DIR [STEPS]   (DATA_DIR holds 0/ and 1/ folders of PNG patches)
"""
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf
from tensorflow.keras import layers, models
from tensorflow.keras.preprocessing.image import ImageDataGenerator

data, steps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40
batch = 32


def cancernet():
    # The tutorial's CancerNet (channels last), layer for layer.
    m = models.Sequential([layers.Input((48, 48, 3))])
    for width, depth in [(32, 1), (64, 2), (128, 3)]:
        for _ in range(depth):
            m.add(layers.SeparableConv2D(width, (3, 3), padding="same", activation="relu"))
            m.add(layers.BatchNormalization(axis=-1))
        m.add(layers.MaxPooling2D(pool_size=(2, 2)))
        m.add(layers.Dropout(0.25))
    m.add(layers.Flatten())
    m.add(layers.Dense(256, activation="relu"))
    m.add(layers.BatchNormalization())
    m.add(layers.Dropout(0.5))
    m.add(layers.Dense(2, activation="softmax"))
    m.compile(loss="categorical_crossentropy", optimizer=tf.keras.optimizers.Adagrad(1e-2), metrics=["accuracy"])
    return m


def rate(fit):
    fit(5)  # warm-up (graph tracing)
    t = time.perf_counter()
    fit(steps)
    return steps * batch / (time.perf_counter() - t)


model = cancernet()
x = np.random.rand(steps * batch, 48, 48, 3).astype(np.float32)
y = tf.keras.utils.to_categorical(np.arange(steps * batch) % 2, 2)
in_memory = rate(lambda n: model.fit(x[: n * batch], y[: n * batch], batch_size=batch, epochs=1, verbose=0))

augment = ImageDataGenerator(
    rescale=1 / 255.0, rotation_range=20, zoom_range=0.05, width_shift_range=0.1,
    height_shift_range=0.1, shear_range=0.05, horizontal_flip=True, vertical_flip=True,
    fill_mode="nearest",
)
flow = augment.flow_from_directory(
    data, class_mode="categorical", target_size=(48, 48), color_mode="rgb", shuffle=True, batch_size=batch
)
model = cancernet()
streaming = rate(lambda n: model.fit(flow, steps_per_epoch=n, epochs=1, verbose=0))
print(f"keras {tf.keras.__version__} (tensorflow {tf.__version__}), {os.cpu_count()} cores, batch {batch}, {steps} steps")
print(f"  (b) in-memory tensors            {in_memory:8.1f} img/s")
print(f"  (a) streaming augmented PNGs     {streaming:8.1f} img/s")
