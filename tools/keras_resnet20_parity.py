"""Keras side of the ResNet-20 parity check (issue: any Keras-style model).

Builds ResNet-20 from its Keras export (../shared/models/resnet20.json), saves its initial weights
as safetensors with Keras names (what `lamb train --initial-weights` reads), trains it with the
check's recipe (Adam 1e-3, batch 128, pixels / 255, no augmentation, validation on the test set
every epoch) and saves the trained weights the same way (what `lamb evaluate --weights` reads).

The pixels are read from the official binary layout written by `lamb data import`, so Keras and
the `lamb` command see byte-identical images (the shared archive is JPEG; decoders differ). With
ORDER (written by `cargo run --release -p lamb-data --example epoch_order -- SEED EPOCHS 50000
ORDER`), every epoch visits the images in `lamb train --seed SEED`'s order, so both sides train on
the same batches; without it, Keras shuffles with its own generator.

Set up once:  python3 -m venv ~/kerasvenv && ~/kerasvenv/bin/pip install tensorflow-cpu==2.15.1 \
                  tensorflow-addons==0.23.0 "numpy<2"
Run:          lamb data import ../shared/data/cifar10-jpeg.tar.gz --out DATA
              ~/kerasvenv/bin/python tools/keras_resnet20_parity.py DATA OUT [EPOCHS=3] [SEED=0] [ORDER]
Writes OUT/initial.safetensors, OUT/trained.safetensors and OUT/keras.json (per-epoch
accuracies, the final test accuracy and the number of test images classified correctly).
"""
import json
import os
import struct
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf


def read_batches(data, names):
    """Images (N, 32, 32, 3) uint8 and labels of official-layout CIFAR-10 batch files."""
    xs, ys = [], []
    for n in names:
        raw = np.fromfile(os.path.join(data, n), dtype=np.uint8)
        if raw.size % 3073:
            sys.exit(f"{n}: {raw.size} bytes is not a whole number of 3073-byte records")
        rec = raw.reshape(-1, 3073)
        ys.append(rec[:, 0].astype(np.int64))
        xs.append(rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(xs), np.concatenate(ys)


def save_safetensors(model, path):
    """Every weight (BatchNormalization's moving statistics included) as f32 under its Keras
    name (`conv2d/kernel:0`), in the safetensors layout: header length, JSON header, data."""
    header, blobs, offset = {}, [], 0
    for w in model.weights:
        a = np.ascontiguousarray(w.numpy(), dtype="<f4")
        header[w.name] = {"dtype": "F32", "shape": list(a.shape),
                          "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(tmp, path)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    data, out = sys.argv[1], sys.argv[2]
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    order = None
    if len(sys.argv) > 5:
        order = np.fromfile(sys.argv[5], dtype="<u4").astype(np.int64)
        if order.size < epochs * 50_000:
            sys.exit(f"{sys.argv[5]}: {order.size} indices, expected {epochs} x 50000")
        order = order[: epochs * 50_000].reshape(epochs, 50_000)
    here = os.path.dirname(os.path.abspath(__file__))
    spec = os.path.join(here, "..", "..", "shared", "models", "resnet20.json")
    os.makedirs(out, exist_ok=True)
    tf.keras.utils.set_random_seed(seed)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    x, y = read_batches(data, [f"data_batch_{i}.bin" for i in range(1, 6)])
    xt, yt = read_batches(data, ["test_batch.bin"])
    x, xt = x.astype(np.float32) / 255.0, xt.astype(np.float32) / 255.0
    with open(spec) as f:
        model = tf.keras.models.model_from_json(f.read())
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    save_safetensors(model, os.path.join(out, "initial.safetensors"))
    t = time.perf_counter()
    if order is None:
        history = model.fit(x, y, batch_size=128, epochs=epochs, shuffle=True,
                            validation_data=(xt, yt), verbose=2).history
    else:
        history = {}
        for e in range(epochs):
            idx = order[e]
            h = model.fit(x[idx], y[idx], batch_size=128, epochs=1, shuffle=False,
                          validation_data=(xt, yt), verbose=2).history
            for k, v in h.items():
                history.setdefault(k, []).extend(v)
    seconds = time.perf_counter() - t
    save_safetensors(model, os.path.join(out, "trained.safetensors"))
    pred = model.predict(xt, batch_size=1000, verbose=0).argmax(axis=1)
    loss, acc = model.evaluate(xt, yt, batch_size=1000, verbose=0)
    result = {
        "epochs": epochs, "seed": seed, "seconds": seconds, "tensorflow": tf.__version__,
        "history": {k: [float(v) for v in vs] for k, vs in history.items()},
        "order": sys.argv[5] if order is not None else "keras shuffle",
        "test_accuracy": float(acc), "test_loss": float(loss),
        "test_correct": int((pred == yt).sum()),
    }
    with open(os.path.join(out, "keras.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("test_accuracy", "test_correct", "seconds")}))


if __name__ == "__main__":
    main()
