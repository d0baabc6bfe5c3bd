#!/usr/bin/env python3
"""Reads a run's TensorBoard event files with TensorBoard's own reader (EventAccumulator) and
checks them against the run's history.json: tags, steps and values.

Usage: tb_check.py RUN_DIR STEPS_PER_EPOCH EVERY [--expect-change-histograms]
Prints one line per check group and exits non-zero on the first mismatch."""

import json
import math
import os
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def load(path):
    acc = EventAccumulator(path, size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def fail(msg):
    print("MISMATCH: " + msg)
    sys.exit(1)


def scalars(acc, tag):
    if tag not in acc.Tags()["scalars"]:
        fail(f"tag {tag} missing; scalar tags: {sorted(acc.Tags()['scalars'])}")
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def close(a, b):
    # Values are stored as float32.
    return math.isclose(a, b, rel_tol=2e-7, abs_tol=1e-7)


def check_series(acc, tag, expected):
    got = scalars(acc, tag)
    if [s for s, _ in got] != [s for s, _ in expected]:
        fail(f"{tag}: steps {[s for s, _ in got]} != {[s for s, _ in expected]}")
    for (s, v), (_, w) in zip(got, expected):
        if not close(v, w):
            fail(f"{tag} at step {s}: {v} != {w} (history.json)")


def main():
    run, steps_per_epoch, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    history = json.load(open(os.path.join(run, "history.json")))["epochs"]
    train = load(os.path.join(run, "tb", "train"))
    val = load(os.path.join(run, "tb", "validation"))
    n = len(history)
    steps = list(range(n))

    check_series(train, "epoch_loss", [(i, r["loss"]) for i, r in zip(steps, history)])
    check_series(train, "epoch_accuracy", [(i, r["accuracy"]) for i, r in zip(steps, history)])
    check_series(val, "epoch_loss", [(i, r["val_loss"]) for i, r in zip(steps, history)])
    check_series(val, "epoch_accuracy", [(i, r["val_accuracy"]) for i, r in zip(steps, history)])
    print(f"ok epoch_loss/epoch_accuracy (train, validation): {n} epochs match history.json")

    names = [t["name"] for t in history[0]["trust_ratios"]]
    for k, name in enumerate(names):
        check_series(train, f"epoch_trust_ratio/{name}",
                     [(i, r["trust_ratios"][k]["mean"]) for i, r in zip(steps, history)])
    print(f"ok epoch_trust_ratio/*: {len(names)} tensors x {n} epochs match history.json")

    lr = scalars(train, "epoch_learning_rate")
    if [s for s, _ in lr] != steps or not all(v > 0 for _, v in lr):
        fail(f"epoch_learning_rate: {lr}")
    print(f"ok epoch_learning_rate: steps {steps}")

    # batch_loss: every EVERY global steps; the running mean, so at an epoch's last step it
    # is the epoch's loss.
    want = [g for g in range(1, n * steps_per_epoch + 1) if g % every == 0]
    bl = scalars(train, "batch_loss")
    if [s for s, _ in bl] != want:
        fail(f"batch_loss steps {[s for s, _ in bl]} != {want}")
    by_step = dict(bl)
    for e, r in enumerate(history, 1):
        g = e * steps_per_epoch
        if g in by_step and not close(by_step[g], r["loss"]):
            fail(f"batch_loss at the last step of epoch {e}: {by_step[g]} != {r['loss']}")
    bacc = dict(scalars(train, "batch_accuracy"))
    for e, r in enumerate(history, 1):
        g = e * steps_per_epoch
        if g in bacc and not close(bacc[g], r["accuracy"]):
            fail(f"batch_accuracy at step {g}: {bacc[g]} != {r['accuracy']}")
    print(f"ok batch_loss/batch_accuracy: {len(bl)} records at steps {want[0]}..{want[-1]}")

    htags = train.Tags()["histograms"]
    for name in names:
        for tag in (f"{name}/histogram", f"{name}/epoch_change/histogram"):
            if tag not in htags:
                fail(f"histogram {tag} missing; histogram tags: {sorted(htags)}")
            hs = train.Histograms(tag)
            if [h.step for h in hs] != steps:
                fail(f"{tag}: steps {[h.step for h in hs]} != {steps}")
            for h in hs:
                v = h.histogram_value
                if sum(v.bucket) != v.num or v.num <= 0 or v.min > v.max:
                    fail(f"{tag} at step {h.step}: counts {sum(v.bucket)} vs num {v.num}")
    print(f"ok histograms: {2 * len(names)} tags x {n} epochs (weights and epoch change)")


if __name__ == "__main__":
    main()
