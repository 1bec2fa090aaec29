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
import sys

import numpy as np
import torch
import torch.nn as nn

import digits_training
from digits_training import accuracy, compare_with_onnxruntime, load_data, op_histogram, seed_everything

HERE = os.path.dirname(os.path.abspath(__file__))
ONNX_PATH = os.path.join(HERE, "digits_cnn.onnx")
NPZ_PATH = os.path.join(HERE, "digits_test.npz")
SEED = 0
OPSET = 17
EPOCHS = 30
BATCH = 64


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


def train(model, x_tr, y_tr):
    digits_training.train(model, x_tr, y_tr, torch.optim.Adam(model.parameters(), lr=3e-3), nn.CrossEntropyLoss(),
                          EPOCHS, BATCH, SEED)


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

    diff, _ = compare_with_onnxruntime(ONNX_PATH, model, x_te, y_te)
    if diff >= 1e-4:
        sys.exit("error: onnxruntime output differs from torch")
    if acc < 0.95:
        sys.exit("error: test accuracy below 95%")


if __name__ == "__main__":
    main()
