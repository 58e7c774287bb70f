"""A small MNIST classifier: the feature extractor of FD-MNIST and the labeller of consistency.

Inputs are ``(B, 1, 28, 28)`` in ``[-1, 1]``, like every data set in
:mod:`ddim.formats.datasets`. The
penultimate layer (:meth:`MnistClassifier.features`, 128 values after a ReLU) plays the role
Inception-v3's pool layer plays for FID; the logits give the class labels.

The bundled weights (``ddim/assets/mnist_classifier.safetensors``) come from::

    python -m ddim.train.classifier MNIST_DIR --out src/ddim/assets/mnist_classifier.safetensors

which trains on the first 9,000 images of the MNIST test split, with random shifts of up to
two pixels, and records the accuracy on the last 1,000 (held out) in the file's metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddim import assets

FORMAT = "ddim-mnist-classifier"
ASSET = "mnist_classifier.safetensors"
NUM_TRAIN = 9000
FEATURE_DIM = 128


class Judge(nn.Module):
    """A digit classifier with a 128-D feature layer: ``features(x)``, logits, ``predict``."""

    def features(self, x: Tensor) -> Tensor:
        """The feature layer ``(B, 128)`` of ``x`` ``(B, 1, 28, 28)`` in ``[-1, 1]``;
        each judge defines its own."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 1000) -> Tensor:
        """Predicted labels ``(B,)`` (LongTensor on ``x``'s device), in eval mode."""
        was_training = self.training
        self.eval()
        labels = torch.cat([self(chunk).argmax(dim=1) for chunk in x.split(batch_size)])
        self.train(was_training)
        return labels


def _check_input(x: Tensor) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"the MNIST classifier needs (B, 1, 28, 28), got {tuple(x.shape)}")


class MnistClassifier(Judge):
    """Three conv stages (28 -> 14 -> 7 -> 3 pixels), a 128-unit feature layer, 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv4 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc = nn.Linear(128 * 3 * 3, FEATURE_DIM)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: Tensor) -> Tensor:
        """The penultimate activations ``(B, 128)``: the FD-MNIST feature space."""
        _check_input(x)
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv3(F.relu(self.conv2(h)))), 2)
        h = F.max_pool2d(F.relu(self.conv4(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, 10)``."""
        return self.head(self.dropout(self.features(x)))


class MnistMLP(Judge):
    """A second judge of another architecture: fully connected on the 784 pixels, no
    convolutions (784 -> 256 -> 128 features -> 10 logits), trained apart from the first."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 256)
        self.fc2 = nn.Linear(256, FEATURE_DIM)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: Tensor) -> Tensor:
        """The penultimate activations ``(B, 128)``: the FD-MLP feature space."""
        _check_input(x)
        return F.relu(self.fc2(self.dropout(F.relu(self.fc1(x.flatten(1))))))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, 10)``."""
        return self.head(self.dropout(self.features(x)))


#: The classifier architectures by name (``info["arch"]`` of a weights file).
ARCHS: dict[str, type[Judge]] = {"cnn": MnistClassifier, "mlp": MnistMLP}
#: The bundled second judge (``python -m ddim.train.classifier --arch mlp``).
MLP_ASSET = "mnist_mlp.safetensors"


def classifier_info(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The metadata stored with a classifier (the bundled one by default)."""
    return read_info(_resolve(path), FORMAT, "MNIST classifier")


def read_info(file: Path, fmt: str, what: str) -> dict[str, Any]:
    """The JSON ``info`` of a classifier weights file whose ``format`` metadata is ``fmt``;
    a ValueError naming the file and ``what`` it should be otherwise."""
    with safetensors.safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != fmt:
        raise ValueError(f"{file} is not a ddim {what} file")
    return json.loads(meta["info"])


def load_classifier(
    path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> Judge:
    """An eval-mode classifier from ``path`` (the bundled CNN by default; ``"mlp"``: the
    bundled second judge), of the architecture its metadata names."""
    file = _resolve(assets.path(MLP_ASSET) if path == "mlp" else path)
    arch = classifier_info(file).get("arch", "cnn")
    model = ARCHS[arch]()
    model.load_state_dict(safetensors.torch.load_file(str(file)))
    return model.to(device).eval()


def _resolve(path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        path = assets.path(ASSET)
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"MNIST classifier {file} is missing; train it with `python -m ddim.train.classifier`"
        )
    return file
