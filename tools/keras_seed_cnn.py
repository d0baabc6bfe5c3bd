"""Keras's epoch time for the seed CNN (the classic experiment's model and recipe), on this machine:
the peer of `lamb compare --fast` and `lamb bench --what engine`, run beside them in the same hour.

The model, batch size (100), optimizers (tfa LAMB lr 1e-3 eps 1e-6 with ReLU; Keras Adam with SELU)
and validation on 10,000 images per epoch are the classic experiment's (../shared/data/README.md).
The images are random (shape 32x32x3, 10 classes, 50,000 training + 10,000 validation): an epoch's
time does not depend on the pixel values, and this keeps the script free of any data reader.

Set up once:  python3 -m venv ~/kerasvenv && ~/kerasvenv/bin/pip install tensorflow-cpu==2.15.1 \
                  tensorflow-addons==0.23.0 "numpy<2"
Run:          ~/kerasvenv/bin/python tools/keras_seed_cnn.py [EPOCHS=3] [THREADS=2]
Prints one line per optimizer: the median epoch time over the epochs after the first.
"""
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf
import tensorflow_addons as tfa

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(threads)
tf.keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.random((50_000, 32, 32, 3), dtype=np.float32)
y = rng.integers(0, 10, 50_000)
xv = rng.random((10_000, 32, 32, 3), dtype=np.float32)
yv = rng.integers(0, 10, 10_000)


def model(act):
    L = tf.keras.layers
    return tf.keras.Sequential([
        L.Conv2D(32, (3, 3), activation=act, input_shape=(32, 32, 3)),
        L.MaxPooling2D((2, 2)),
        L.Conv2D(64, (3, 3), activation=act),
        L.MaxPooling2D((2, 2)),
        L.Flatten(),
        L.Dense(10, activation="softmax"),
    ])


class Times(tf.keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.t)


print(f"tensorflow {tf.__version__}, {threads} threads, {epochs} epochs of 50,000 + 10,000 images, batch 100")
for name, act, opt in [
    ("LAMB (tfa) + ReLU", "relu", lambda: tfa.optimizers.LAMB(learning_rate=1e-3, epsilon=1e-6)),
    ("Adam + SELU", "selu", lambda: tf.keras.optimizers.Adam()),
]:
    m = model(act)
    m.compile(optimizer=opt(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    cb = Times()
    cb.times = []
    m.fit(x, y, batch_size=100, epochs=epochs, validation_data=(xv, yv), verbose=0, callbacks=[cb])
    rest = cb.times[1:] or cb.times
    print(f"keras {name}: median epoch {np.median(rest):.2f} s (epochs: {', '.join(f'{t:.2f}' for t in cb.times)})")
