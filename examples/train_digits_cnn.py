"""Train a small Conv-BN-ReLU CNN on scikit-learn's ``load_digits`` and export it to ONNX.

Outputs (next to this script):
  digits_cnn.onnx  - input ``x`` float32 [N,1,8,8] (dynamic batch ``N``), output ``logits`` [N,10];
                     BatchNormalization kept as separate nodes (not folded into Conv), opset 17.
  digits_test.npz  - 16 held-out test samples: ``x`` float32 [16,1,8,8], ``labels`` int64 [16].

Run:  python examples/train_digits_cnn.py
Needs torch==2.13.0 (CPU), scikit-learn, onnx, onnxruntime. No network access: load_digits ships
with scikit-learn. Seeds, a single thread and deterministic algorithms make reruns reproduce the
same weights and accuracy.
"""

import os
import random
import sys

import numpy as np
import torch
import torch.nn as nn
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = os.path.dirname(os.path.abspath(__file__))
ONNX_PATH = os.path.join(HERE, "digits_cnn.onnx")
NPZ_PATH = os.path.join(HERE, "digits_test.npz")
SEED = 0
OPSET = 17
EPOCHS = 30
BATCH = 64


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.features(x))


def load_data():
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # [1797,1,8,8] in [0,1]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, random_state=42, stratify=y)


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def train(model, x_tr, y_tr):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    g = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        total = 0.0
        for i in range(0, len(xt), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  train loss {total / len(xt):.4f}")


def export(model):
    model.eval()
    dummy = torch.zeros(2, 1, 8, 8)
    # TorchScript exporter: in TrainingMode.EVAL it runs an eval peephole pass that folds
    # BatchNorm into the preceding Conv. PRESERVE (with the model in eval mode, so BN uses its
    # running statistics) skips that pass; do_constant_folding=False keeps the graph as written.
    torch.onnx.export(
        model, (dummy,), ONNX_PATH,
        input_names=["x"], output_names=["logits"],
        dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
        opset_version=OPSET,
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.PRESERVE,
        dynamo=False,
    )


def op_histogram(path):
    import collections
    import onnx
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    return collections.Counter(n.op_type for n in m.graph.node)


def main():
    seed_everything(SEED)
    x_tr, x_te, y_tr, y_te = load_data()
    print(f"train {len(x_tr)}  test {len(x_te)}")
    model = DigitsCNN()
    train(model, x_tr, y_tr)
    acc = accuracy(model, x_te, y_te)
    print(f"torch test accuracy: {acc * 100:.2f}% ({int(round(acc * len(y_te)))}/{len(y_te)})")

    export(model)
    hist = op_histogram(ONNX_PATH)
    print(f"exported {ONNX_PATH} ({os.path.getsize(ONNX_PATH)} bytes), ops: {dict(sorted(hist.items()))}")
    if hist.get("BatchNormalization", 0) != 3:
        sys.exit("error: expected 3 BatchNormalization nodes in the export (BN was folded?)")

    np.savez(NPZ_PATH, x=x_te[:16].astype(np.float32), labels=y_te[:16].astype(np.int64))
    print(f"saved {NPZ_PATH} ({os.path.getsize(NPZ_PATH)} bytes)")

    import onnxruntime as ort
    sess = ort.InferenceSession(ONNX_PATH, providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"x": x_te})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x_te)).numpy()
    diff = float(np.abs(ort_logits - ref).max())
    ort_acc = float((ort_logits.argmax(1) == y_te).mean())
    print(f"onnxruntime vs torch max abs diff: {diff:.3e}")
    print(f"onnxruntime test accuracy: {ort_acc * 100:.2f}%")
    if diff >= 1e-4:
        sys.exit("error: onnxruntime output differs from torch")
    if acc < 0.95:
        sys.exit("error: test accuracy below 95%")


if __name__ == "__main__":
    main()
