"""NN4-small2 (OpenFace's ``nn4.small2.v1``) as a PyTorch module.

Architecture from OpenFace's released model (Amos et al. 2016, after FaceNet's NN4 of Schroff
et al. 2015): a GoogLeNet-style stem and seven inception blocks on a 3x96x96 RGB input in
[0, 1], average pooling, a 736->128 linear layer and L2 normalisation. Module and parameter
names follow OpenFace's own PyTorch port (``openface/openfacenet.py``) so that its
``nn4.small2.v1.pt`` state dict loads directly; ``torch7_layers`` gives the name each
parametrised layer has in Torch7 exports (``conv1``, ``inception_3a_3x3_conv1``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INPUT_SIZE = 96
EMBEDDING_DIM = 128
#: Parameter count of the released network (conv, BN affine and linear; BN statistics excluded).
PARAMETER_COUNT = 3_733_968


class L2Pool2d(nn.Module):
    """L2 pooling: sqrt of the sum of squares over each window (Torch7 SpatialLPPooling, p=2).

    ``eps`` (default 0, exact) can be set > 0 when training: the sqrt of an all-zero window
    has an infinite gradient.
    """

    def __init__(self, kernel_size: int, stride: int, eps: float = 0.0) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        s = F.avg_pool2d(x * x, k, self.stride) * float(k * k)
        return torch.sqrt(s + self.eps) if self.eps else torch.sqrt(s)


class CrossChannelLRN(nn.Module):
    """Local response normalisation across channels (Torch7 ``SpatialCrossMapLRN``), fast on CPU.

    Same result as ``nn.LocalResponseNorm(size, alpha, beta, k)`` (within float rounding):
    ``x / (k + alpha / size * sum of x^2 over the size channels centred on c) ^ beta``. The
    window sum is ``size`` shifted adds of a zero-padded square, and ``t ^ -0.75`` is
    ``rsqrt(t) * rsqrt(sqrt(t))``; ``nn.LocalResponseNorm`` spends a 3-D average pool and a
    general power on it, about a third of NN4-small2's CPU time.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():  # ONNX has this operator
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        sq = F.pad(x * x, (0, 0, 0, 0, self.size // 2, (self.size - 1) // 2))
        c = x.shape[1]
        total = sq[:, 0:c]
        for i in range(1, self.size):
            total = total + sq[:, i : i + c]
        t = total * (self.alpha / self.size) + self.k
        if self.beta == 0.75:
            return x * torch.rsqrt(t) * torch.rsqrt(torch.sqrt(t))
        return x * t.pow(-self.beta)


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU()]


@dataclass(frozen=True)
class InceptionConfig:
    """One row of NN4-small2's inception table (``None``: the branch or projection is absent)."""

    name: str
    cin: int
    red3: int
    out3: int
    red5: Optional[int]
    out5: Optional[int]
    pool: str  # "max" (3x3 stride 2, no padding) or "l2" (3x3 stride 3)
    pool_proj: Optional[int]
    out1: Optional[int]
    stride: int

    @property
    def cout(self) -> int:
        return self.out3 + (self.out5 or 0) + (self.pool_proj or self.cin) + (self.out1 or 0)


#: OpenFace's released nn4.small2.v1 (see the module docstring).
NN4_SMALL2_BLOCKS = (
    InceptionConfig("3a", 192, 96, 128, 16, 32, "max", 32, 64, 1),
    InceptionConfig("3b", 256, 96, 128, 32, 64, "l2", 64, 64, 1),
    InceptionConfig("3c", 320, 128, 256, 32, 64, "max", None, None, 2),
    InceptionConfig("4a", 640, 96, 192, 32, 64, "l2", 128, 256, 1),
    InceptionConfig("4e", 640, 160, 256, 64, 128, "max", None, None, 2),
    InceptionConfig("5a", 1024, 96, 384, None, None, "l2", 96, 256, 1),
    InceptionConfig("5b", 736, 96, 384, None, None, "max", 96, 256, 1),
)


class Inception(nn.Module):
    """An inception block: 3x3, 5x5, pool and 1x1 branches, zero-padded to one size, concatenated.

    ``branches`` is a ModuleList of Sequentials; a conv branch is
    [1x1 conv, BN, ReLU, kxk conv, BN, ReLU], the pool branch [pool, (1x1 conv, BN, ReLU)],
    the 1x1 branch [1x1 conv, BN, ReLU] (the indices match OpenFace's port).
    """

    def __init__(self, cfg: InceptionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        branches: list[nn.Module] = []
        self.torch7_names: list[tuple[str, str]] = []  # (sub-module path, Torch7 layer name)
        prefix = f"inception_{cfg.name}"
        for kernel, red, out in ((3, cfg.red3, cfg.out3), (5, cfg.red5, cfg.out5)):
            if red is None or out is None:
                continue
            idx = len(branches)
            branches.append(
                nn.Sequential(*_conv_bn_relu(cfg.cin, red, 1), *_conv_bn_relu(red, out, kernel, cfg.stride))
            )
            tag = f"{prefix}_{kernel}x{kernel}"
            self.torch7_names += [
                (f"branches.{idx}.0", f"{tag}_conv1"),
                (f"branches.{idx}.1", f"{tag}_bn1"),
                (f"branches.{idx}.3", f"{tag}_conv2"),
                (f"branches.{idx}.4", f"{tag}_bn2"),
            ]
        pool: nn.Module = nn.MaxPool2d(3, stride=2) if cfg.pool == "max" else L2Pool2d(3, 3)
        idx = len(branches)
        if cfg.pool_proj:
            branches.append(nn.Sequential(pool, *_conv_bn_relu(cfg.cin, cfg.pool_proj, 1)))
            self.torch7_names += [
                (f"branches.{idx}.1", f"{prefix}_pool_conv"),
                (f"branches.{idx}.2", f"{prefix}_pool_bn"),
            ]
        else:
            branches.append(nn.Sequential(pool))
        if cfg.out1:
            idx = len(branches)
            branches.append(nn.Sequential(*_conv_bn_relu(cfg.cin, cfg.out1, 1)))
            self.torch7_names += [
                (f"branches.{idx}.0", f"{prefix}_1x1_conv"),
                (f"branches.{idx}.1", f"{prefix}_1x1_bn"),
            ]
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        h = max(o.shape[2] for o in outs)
        w = max(o.shape[3] for o in outs)
        padded = []
        for o in outs:
            dh, dw = h - o.shape[2], w - o.shape[3]
            if dh or dw:
                o = F.pad(o, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
            padded.append(o)
        return torch.cat(padded, dim=1)


class NN4Small2(nn.Module):
    """OpenFace's nn4.small2.v1 network: (N, 3, 96, 96) RGB in [0, 1] -> (N, 128) unit vectors."""

    #: its input is RGB in [0, 1] x this (``nets/networks.py``)
    input_range = 1.0
    #: the stem's modules with parameters or batch-norm statistics
    STEM_MODULES = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.lrn = CrossChannelLRN(5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv2 = nn.Conv2d(64, 64, 1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 192, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(192)
        for cfg in NN4_SMALL2_BLOCKS:
            setattr(self, f"incept{cfg.name}", Inception(cfg))
        self.avgpool = nn.AvgPool2d(3, stride=1)
        self.ln = nn.Linear(736, EMBEDDING_DIM)

    def features(self, x: Tensor, start: int = 0, stop: Optional[int] = None) -> Tensor:
        """Blocks ``start``..``stop``-1 of ``self.blocks()`` (all: the 736x3x3 map after inception 5b).

        Block 0 is the stem (conv1 .. the second LRN and max-pool), blocks 1.. the inceptions.
        """
        for block in self.blocks()[start:stop]:
            x = block(x)
        return x

    def blocks(self) -> list:
        """The network up to the average pool as a list of callables, in order (see ``features``)."""
        return [self._stem] + [getattr(self, f"incept{cfg.name}") for cfg in NN4_SMALL2_BLOCKS]

    def block_modules(self, i: int) -> list[nn.Module]:
        """The modules holding block ``i``'s parameters (what freezing block ``i`` stops)."""
        if i == 0:
            return [getattr(self, name) for name in self.STEM_MODULES]
        return [self.blocks()[i]]

    def _stem(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.lrn(x)
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.maxpool(self.lrn(x))

    def head(self, x: Tensor) -> Tensor:
        """The 736x3x3 map -> unit-length embedding (average pool, linear, L2 normalisation)."""
        x = self.ln(self.avgpool(x).flatten(1))
        return x / torch.sqrt((x * x).sum(dim=1, keepdim=True) + 1e-10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def torch7_layers(self) -> list[tuple[str, str]]:
        """Parametrised layers in Torch7 order: (module path here, Torch7 export name)."""
        names = [
            ("conv1", "conv1"),
            ("bn1", "bn1"),
            ("conv2", "conv2"),
            ("bn2", "bn2"),
            ("conv3", "conv3"),
            ("bn3", "bn3"),
        ]
        for cfg in NN4_SMALL2_BLOCKS:
            block: Inception = getattr(self, f"incept{cfg.name}")
            names += [(f"incept{cfg.name}.{path}", t7) for path, t7 in block.torch7_names]
        names.append(("ln", "dense"))
        return names


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def preprocess(faces_rgb) -> Tensor:
    """Aligned RGB uint8 faces (N, 96, 96, 3) -> float tensor (N, 3, 96, 96) in [0, 1]."""
    t = torch.as_tensor(faces_rgb)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[3] != 3:
        raise ValueError(f"expected faces of shape (N, H, W, 3), got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float().div_(255.0).contiguous()
