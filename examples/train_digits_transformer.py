"""Train a small ViT-style transformer classifier on scikit-learn's ``load_digits`` and export it.

Output (next to this script):
  digits_transformer.onnx - input ``x`` float32 [N,1,8,8] (dynamic batch ``N``), output ``logits``
                            [N,10]; opset 17. Attention is written out with plain ops (MatMul,
                            Mul, Softmax), so the graph holds MatMul/Add/Softmax/LayerNormalization/
                            Erf (GELU) nodes rather than a fused attention op - a fixture for int8
                            quantization of MatMuls and attention. Dropout (training only)
                            leaves no nodes in the eval-mode export.

The test split is the same as ``train_digits_cnn.py`` (``digits_test.npz`` holds its first 16
samples), so that file serves this model too.

Run:  python examples/train_digits_transformer.py
Needs torch==2.13.0 (CPU), scikit-learn, onnx, onnxruntime. No network access: load_digits ships
with scikit-learn. Seeds, a single thread and deterministic algorithms make reruns reproduce the
same weights, accuracy and a byte-identical .onnx file.
"""

import math
import os
import sys
import time

import torch
import torch.nn as nn

import digits_training
from digits_training import accuracy, compare_with_onnxruntime, load_data, op_histogram, seed_everything

HERE = os.path.dirname(os.path.abspath(__file__))
ONNX_PATH = os.path.join(HERE, "digits_transformer.onnx")
SEED = 0
OPSET = 17
EPOCHS = 80
BATCH = 64
LR = 3e-3
WEIGHT_DECAY = 1e-2
DROPOUT = 0.1
LABEL_SMOOTHING = 0.1

PATCH = 2                        # 2x2 patches of the 8x8 image -> 16 tokens of 4 pixels
GRID = 8 // PATCH                # 4 patches per side
TOKENS = GRID * GRID             # 16
PATCH_DIM = PATCH * PATCH        # 4
D_MODEL = 32
HEADS = 4
D_HEAD = D_MODEL // HEADS        # 8
D_FF = 64
LAYERS = 2
NUM_CLASSES = 10


class Attention(nn.Module):
    """Multi-head self-attention written out with matmul/softmax (no fused SDPA/MHA path)."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(D_MODEL, D_MODEL)
        self.k = nn.Linear(D_MODEL, D_MODEL)
        self.v = nn.Linear(D_MODEL, D_MODEL)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        self.scale = 1.0 / math.sqrt(D_HEAD)
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, x):                                       # x [N,T,D]
        q = self.q(x).reshape(-1, TOKENS, HEADS, D_HEAD).permute(0, 2, 1, 3)  # [N,H,T,Dh]
        k = self.k(x).reshape(-1, TOKENS, HEADS, D_HEAD).permute(0, 2, 3, 1)  # [N,H,Dh,T]
        v = self.v(x).reshape(-1, TOKENS, HEADS, D_HEAD).permute(0, 2, 1, 3)  # [N,H,T,Dh]
        att = torch.matmul(q, k) * self.scale                   # [N,H,T,T]
        att = self.drop(torch.softmax(att, dim=-1))
        out = torch.matmul(att, v)                              # [N,H,T,Dh]
        out = out.transpose(1, 2).reshape(-1, TOKENS, D_MODEL)  # [N,T,D]
        return self.proj(out)


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer: x + Attn(LN(x)), then x + FFN(LN(x)), FFN with GELU."""

    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.attn = Attention()
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.ff1 = nn.Linear(D_MODEL, D_FF)
        self.act = nn.GELU()
        self.ff2 = nn.Linear(D_FF, D_MODEL)
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, x):
        x = x + self.drop(self.attn(self.ln1(x)))
        x = x + self.drop(self.ff2(self.act(self.ff1(self.ln2(x)))))
        return x


class DigitsTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(PATCH_DIM, D_MODEL)
        self.pos = nn.Parameter(torch.randn(1, TOKENS, D_MODEL) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, NUM_CLASSES)

    def forward(self, x):                                       # x [N,1,8,8]
        # 2x2 patches in row-major patch order, each flattened row-major: [N,16,4]
        x = x.reshape(-1, GRID, PATCH, GRID, PATCH).permute(0, 1, 3, 2, 4)
        x = x.reshape(-1, TOKENS, PATCH_DIM)
        x = self.embed(x) + self.pos                            # [N,16,32]
        for layer in self.layers:
            x = layer(x)
        x = self.ln(x).mean(dim=1)                              # mean pooling over tokens: [N,32]
        return self.head(x)                                     # [N,10]


def train(model, x_tr, y_tr):
    digits_training.train(model, x_tr, y_tr,
                          torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY),
                          nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING), EPOCHS, BATCH, SEED)


def export(model):
    model.eval()
    dummy = torch.zeros(2, 1, 8, 8)
    # TorchScript exporter (no onnxscript needed). Linear on 3-D activations becomes MatMul + Add
    # (weights pre-transposed by constant folding), LayerNorm becomes LayerNormalization (opset
    # 17), exact GELU becomes its Erf form (the Gelu op only exists from opset 20).
    torch.onnx.export(
        model, (dummy,), ONNX_PATH,
        input_names=["x"], output_names=["logits"],
        dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
        opset_version=OPSET,
        dynamo=False,
    )


def main():
    seed_everything(SEED, deterministic=False)
    x_tr, x_te, y_tr, y_te = load_data()
    print(f"train {len(x_tr)}  test {len(x_te)}")
    model = DigitsTransformer()
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {params}")
    t0 = time.perf_counter()
    train(model, x_tr, y_tr)
    print(f"training time: {time.perf_counter() - t0:.1f} s")
    acc = accuracy(model, x_te, y_te)
    print(f"torch test accuracy: {acc * 100:.2f}% ({int(round(acc * len(y_te)))}/{len(y_te)})")

    export(model)
    hist = op_histogram(ONNX_PATH)
    print(f"exported {ONNX_PATH} ({os.path.getsize(ONNX_PATH)} bytes), ops: {dict(sorted(hist.items()))}")
    for op in ("MatMul", "Softmax", "LayerNormalization", "Erf"):
        if not hist.get(op):
            sys.exit(f"error: expected {op} nodes in the export")

    diff, _ = compare_with_onnxruntime(ONNX_PATH, model, x_te, y_te)
    if diff >= 1e-4:
        sys.exit("error: onnxruntime output differs from torch")
    if acc < 0.97:
        sys.exit("error: test accuracy below 97%")


if __name__ == "__main__":
    main()
