"""MobileFaceNet with squeeze-and-excitation blocks, as in Intel's face-reidentification-retail-0095.

The architecture (Chen, Liu, Gao and Han, "MobileFaceNets: Efficient CNNs for Accurate Real-Time
Face Verification on Mobile Devices", CCBR 2018, with an SE block after each bottleneck's
projection) was read off the topology of Intel's OpenVINO IR (``models/convert_reid0095.py``);
this is the project's own code. The released network has its batch normalisations folded into
the convolutions, so every convolution here carries a bias and there is no BatchNorm layer;
every PReLU has one slope for all channels.

Input: (N, 3, 128, 128) float32 **RGB, 0-255** (the converter reorders Intel's BGR input
normalisation and first convolution), aligned by ``faces.align.intel5_spec``. Output: (N, 256)
float32, L2-normalised (``normalize=True``, the default) or raw.

Layout (t = expansion, c = output channels, n = repeats, s = stride of the first):
conv 3x3/2 (64) -> depthwise 3x3 (64) -> bottlenecks (2,64,5,2) (4,128,1,2) (2,128,6,1)
(4,128,1,2) (2,128,2,1) -> conv 1x1 (512) -> global depthwise 8x8 (linear) -> conv 1x1 (256, no bias).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: (expansion, output channels, repeats, stride of the first) of MobileFaceNet's bottlenecks.
BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))
INPUT_SIZE = 128
EMBEDDING_DIM = 256
#: Channel reduction of the squeeze-and-excitation blocks.
SE_REDUCTION = 8


class ConvAct(nn.Module):
    """Convolution (batch norm folded into its bias), then PReLU with one slope when ``act``."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        # 3x3 convolutions are padded by 1; the 1x1 and the global 8x8 depthwise ones are not
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=1 if kernel == 3 else 0, groups=groups)
        self.act = nn.PReLU(1) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.act(x) if self.act is not None else x


class SqueezeExcite(nn.Module):
    """Channel gates: global mean -> 1x1 (C/8) -> PReLU -> 1x1 (C) -> sigmoid, times the input."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.act = nn.PReLU(1)
        self.expand = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(g))))


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise 3x3 -> 1x1 project (linear) -> SE, plus the
    input when the stride is 1 and the channels match."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.expand = ConvAct(cin, hidden, 1)
        self.depthwise = ConvAct(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvAct(hidden, cout, 1, act=False)
        self.se = SqueezeExcite(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.project(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class MobileFaceNet(nn.Module):
    """MobileFaceNet-SE (about 1.1 M parameters): 128x128 RGB 0-255 faces -> 256-D embeddings.

    For training (``nets/networks.py``) it is six blocks: the stem (input normalisation, the first
    convolution and the depthwise one) and the five bottleneck stages of ``BOTTLENECKS``; the head
    is the 1x1 convolution to 512, the global depthwise one and the projection to 256.
    """

    #: its input is RGB in [0, 1] x this, i.e. 0-255 (``nets/networks.py``)
    input_range = 255.0

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize
        # per-channel x * scale + shift, RGB order (Intel's input normalisation layer)
        self.register_buffer("input_scale", torch.ones(1, 3, 1, 1))
        self.register_buffer("input_shift", torch.zeros(1, 3, 1, 1))
        self.stem = ConvAct(3, 64, 3, 2)
        self.stem_dw = ConvAct(64, 64, 3, 1, groups=64)
        blocks = []
        cin = 64
        for t, c, n, s in BOTTLENECKS:
            for i in range(n):
                blocks.append(Bottleneck(cin, c, t, s if i == 0 else 1))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        # registered as "head" (the shipped state dict's keys) but reached as ``head_conv``:
        # ``head`` is the method every trainable network has (``nets/networks.py``)
        self._modules["head"] = ConvAct(cin, 512, 1)
        self.gdc = ConvAct(512, 512, 8, groups=512, act=False)
        self.embedding = nn.Conv2d(512, EMBEDDING_DIM, 1, bias=False)

    @property
    def head_conv(self) -> ConvAct:
        """The 1x1 convolution to 512 channels that starts the head."""
        return self._modules["head"]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem_dw(self.stem(x * self.input_scale + self.input_shift))

    def _stages(self) -> list[nn.Sequential]:
        """The bottlenecks grouped by stage (one ``BOTTLENECKS`` row each), sharing their modules."""
        out, start = [], 0
        for _, _, n, _ in BOTTLENECKS:
            out.append(self.blocks[start : start + n])
            start += n
        return out

    def training_blocks(self) -> list:
        """The network up to the head as callables in order: the stem, then the five stages."""
        return [self._stem] + self._stages()

    def block_modules(self, i: int) -> list[nn.Module]:
        """The modules holding training block ``i``'s parameters (what freezing it stops)."""
        return [self.stem, self.stem_dw] if i == 0 else [self._stages()[i - 1]]

    def features(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Training blocks ``start``..``stop``-1 (all: the 128x8x8 map before the head)."""
        for block in self.training_blocks()[start:stop]:
            x = block(x)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The 128x8x8 map -> the embedding (unit length when ``normalize``)."""
        x = self.embedding(self.gdc(self.head_conv(x))).flatten(1)
        return F.normalize(x, dim=1) if self.normalize else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 128, 128) float RGB 0-255 -> (N, 256) (unit length when ``normalize``)."""
        return self.head(self.features(x))
