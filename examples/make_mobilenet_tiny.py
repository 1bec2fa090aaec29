"""Build a microcontroller-sized MobileNetV2-style network (width 0.35, 64x64 input) and export it.

Output (next to this script):
  mobilenet_tiny.onnx - input ``input`` float32 [1,3,64,64] (fixed batch 1), output ``logits``
                        [1,10]; opset 17; BatchNormalization kept as separate nodes; ReLU6 as Clip.

The weights are random (seeded) - this is a compile/speed/accuracy-vs-onnxruntime fixture, not a
trained classifier. BatchNorm affine parameters are randomised and running statistics are
accumulated from a few train-mode forward passes on random data, so BN is not an identity.

Run:  python examples/make_mobilenet_tiny.py   (torch==2.13.0 CPU, onnx, onnxruntime)
"""

import collections
import os
import random
import sys

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
ONNX_PATH = os.path.join(HERE, "mobilenet_tiny.onnx")
SEED = 0
OPSET = 17
WIDTH = 0.35
NUM_CLASSES = 10
INPUT_SHAPE = (1, 3, 64, 64)

# (expand ratio t, output channels c at width 1.0, repeats n, first stride s) - a shortened
# MobileNetV2 schedule: 8 inverted-residual blocks, 3 of them with a residual Add.
SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 2, 2),
    (6, 64, 2, 2),
    (6, 96, 1, 1),
]


def make_divisible(v, divisor=8, min_value=None):
    """Round channel counts like torchvision's MobileNetV2 does."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_bn_relu6(cin, cout, k, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers.append(conv_bn_relu6(cin, hidden, 1))                         # 1x1 expand
        layers.append(conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden))   # 3x3 depthwise
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]  # 1x1 project
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetTiny(nn.Module):
    def __init__(self, width=WIDTH, num_classes=NUM_CLASSES):
        super().__init__()
        cin = make_divisible(32 * width)
        last = make_divisible(1280 * width)
        layers = [conv_bn_relu6(3, cin, 3, stride=2)]
        for t, c, n, s in SETTINGS:
            cout = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_relu6(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


def init_weights(model, gen):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", generator=gen)
        elif isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)   # [0.5, 1.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.05, generator=gen)
            nn.init.normal_(m.bias, 0, 0.05, generator=gen)


def calibrate_bn(model, gen, batches=8, batch_size=8):
    """Train-mode forward passes on random data so BN running stats are non-trivial."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            x = torch.rand(batch_size, *INPUT_SHAPE[1:], generator=gen) * 2 - 1
            model(x)
    for m in bns:
        m.momentum = 0.1
    model.eval()


def count_macs(model, x):
    """MACs of Conv2d and Linear layers (multiply-accumulates, batch 1)."""
    macs = []

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            k = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]  # (cin/groups)*kh*kw
            macs.append(out.numel() * k)
        else:
            macs.append(out.numel() * m.in_features)

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return sum(macs)


def main():
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)

    model = MobileNetTiny()
    init_weights(model, gen)
    calibrate_bn(model, gen)

    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    params = sum(p.numel() for p in model.parameters())
    bn_buffers = sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))
    x = torch.rand(*INPUT_SHAPE, generator=gen) * 2 - 1
    macs = count_macs(model, x)
    print(f"inverted residual blocks: {len(blocks)} ({sum(b.use_res for b in blocks)} with residual Add)")
    print(f"parameters: {params} (+{bn_buffers} BN running-stat values)")
    print(f"MACs (conv+linear, batch 1, 64x64): {macs} (~{macs / 1e6:.2f} M)")

    # Same exporter settings as train_digits_cnn.py: TorchScript exporter, PRESERVE with the model
    # in eval mode (skips the eval pass that folds BN into Conv), no constant folding.
    torch.onnx.export(
        model, (x,), ONNX_PATH,
        input_names=["input"], output_names=["logits"],
        opset_version=OPSET,
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.PRESERVE,
        dynamo=False,
    )

    import onnx
    m = onnx.load(ONNX_PATH)
    onnx.checker.check_model(m, full_check=True)
    hist = collections.Counter(n.op_type for n in m.graph.node)
    print(f"exported {ONNX_PATH} ({os.path.getsize(ONNX_PATH)} bytes)")
    print(f"ops: {dict(sorted(hist.items()))}")
    n_bn = sum(isinstance(mod, nn.BatchNorm2d) for mod in model.modules())
    if hist.get("BatchNormalization", 0) != n_bn:
        sys.exit(f"error: expected {n_bn} BatchNormalization nodes (BN was folded?)")

    import onnxruntime as ort
    sess = ort.InferenceSession(ONNX_PATH, providers=["CPUExecutionProvider"])
    worst = 0.0
    for i in range(4):
        xi = x if i == 0 else torch.rand(*INPUT_SHAPE, generator=gen) * 2 - 1
        with torch.no_grad():
            ref = model(xi).numpy()
        got = sess.run(["logits"], {"input": xi.numpy()})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    print(f"logits range (sample 0): [{ref.min():.3f}, {ref.max():.3f}]")
    print(f"onnxruntime vs torch max abs diff (4 random inputs): {worst:.3e}")
    if worst >= 1e-4:
        sys.exit("error: onnxruntime output differs from torch")


if __name__ == "__main__":
    main()
