"""What the digits training scripts share: seeding, the load_digits split, the training loop,
accuracy, the export check and the onnxruntime comparison (``train_digits_cnn.py``,
``train_digits_transformer.py``). Changing it changes both committed models."""

import collections
import random

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def seed_everything(seed, deterministic=True):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    if deterministic:
        torch.use_deterministic_algorithms(True)


def load_data():
    """Pixels/16 as [N,1,8,8] float32; the 80/20 stratified split with random_state=42
    (1437 train / 360 test)."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # [1797,1,8,8] in [0,1]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, random_state=42, stratify=y)


def train(model, x_tr, y_tr, opt, loss_fn, epochs, batch, seed):
    """Mini-batches in a seeded random order, a cosine learning-rate schedule over ``epochs``."""
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        total = 0.0
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  train loss {total / len(xt):.4f}")


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def op_histogram(path):
    import onnx
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    return collections.Counter(n.op_type for n in m.graph.node)


def compare_with_onnxruntime(path, model, x_te, y_te):
    """onnxruntime on the export against torch: (max abs logit difference, test accuracy)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"x": x_te})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x_te)).numpy()
    diff = float(np.abs(ort_logits - ref).max())
    ort_acc = float((ort_logits.argmax(1) == y_te).mean())
    print(f"onnxruntime vs torch max abs diff: {diff:.3e}")
    print(f"onnxruntime test accuracy: {ort_acc * 100:.2f}% ({int(round(ort_acc * len(y_te)))}/{len(y_te)})")
    return diff, ort_acc
