"""MTCNN face detection (Zhang et al., "Joint Face Detection and Alignment using Multi-task
Cascaded Convolutional Networks", IEEE SPL 2016), written for this project in PyTorch.

Three networks run as a cascade: P-Net slides over an image pyramid (a 12x12 window, stride 2)
and proposes boxes; R-Net re-scores and refines 24x24 crops of them; O-Net re-scores 48x48
crops and gives the box its final regression and five landmarks (eye centres, nose tip, mouth
corners). Between the stages boxes are squared, merged by non-maximum suppression and moved
by the regressions, with the constants of the paper's released code (pyramid factor 0.709,
thresholds 0.6/0.7/0.7, NMS 0.5 per scale, 0.7 across scales and after R-Net, 0.7 by the
smaller area after O-Net).

Weights: the three networks as converted to PyTorch by the ``facenet-pytorch`` project
(MIT licence; from the MIT-licensed Caffe models of Zhang et al.), stored in one plain state
dict ``models/mtcnn.pt`` (``models/MTCNN_CARD.md``), pinned by SHA-256.

Device: ``device=`` runs the networks, the pyramid's resizing and the crops there (a GPU); the
photos move as uint8 bytes, and only the greedy suppression and the results come back to the host.

Coordinates: boxes leave the cascade in the released code's convention (1-based, right and
bottom inclusive) and are returned 0-based; landmarks are 0-based pixel positions (x, y).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from openface_py import store
from openface_py.errors import ModelNotInstalledError, UsageError

log = logging.getLogger(__name__)

#: The paper's released defaults (see module docstring).
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
DEFAULT_MIN_FACE = 20
PYRAMID_FACTOR = 0.709


class PNet(nn.Module):
    """Proposal network: fully convolutional, 12x12 receptive field, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box regression

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return F.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


def _flatten_caffe(x: torch.Tensor) -> torch.Tensor:
    """Flatten as the Caffe models did (their images were transposed: width before height)."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_caffe(self.prelu3(self.conv3(x)))))
        return F.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output network on 48x48 crops: score, box regression, 5 landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # x of the 5 points, then y, relative to the box

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_caffe(self.prelu4(self.conv4(x)))))
        return F.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


NETS = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def load_mtcnn_state(path: Optional[Path] = None) -> dict[str, dict[str, torch.Tensor]]:
    """The shipped weights (``models/mtcnn.pt``, SHA-256 checked) or ``path``: {"pnet": state, ...}."""
    pinned = path is None
    if pinned:
        path = store.project_models_dir() / store.MTCNN_WEIGHTS.filename
    path = Path(path)
    if not path.is_file():
        raise ModelNotInstalledError(
            f"MTCNN weights not found at {path} (they ship with the package; reinstall it, or use a source checkout)"
        )
    if pinned and store.sha256sum(path) != store.MTCNN_WEIGHTS.sha256:
        raise ModelNotInstalledError(f"{path}: SHA-256 differs from the pinned {store.MTCNN_WEIGHTS.sha256}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if set(state) != set(NETS):
        raise ModelNotInstalledError(f"{path}: expected the nets {sorted(NETS)}, found {sorted(state)}")
    return state


@dataclass(frozen=True)
class MtcnnFace:
    """One face as the cascade gives it: box (x1, y1, x2, y2, 0-based, inclusive), O-Net's
    score and the 5 landmarks (left eye, right eye, nose, left and right mouth corner, as seen
    in the image), shape (5, 2)."""

    box: tuple[float, float, float, float]
    score: float
    points: np.ndarray


class Mtcnn:
    """The three-stage cascade, batched over images (same-size images share each P-Net pass)
    and over all candidate boxes of a batch in R-Net and O-Net."""

    def __init__(
        self,
        min_face: int = DEFAULT_MIN_FACE,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        factor: float = PYRAMID_FACTOR,
        weights: Optional[Path] = None,
        crop_batch: int = 512,
        device: str = "cpu",
    ) -> None:
        if min_face < 12:
            raise UsageError("MTCNN's minimum face size is 12 pixels (P-Net's window)")
        if len(thresholds) != 3 or not all(0.0 <= float(t) <= 1.0 for t in thresholds):
            raise UsageError("MTCNN needs three thresholds between 0 and 1 (P-Net, R-Net, O-Net)")
        if not 0.1 <= factor < 1.0:
            raise UsageError("the pyramid factor must be in [0.1, 1)")
        self.min_face, self.thresholds, self.factor = int(min_face), tuple(float(t) for t in thresholds), float(factor)
        self.crop_batch = int(crop_batch)
        self.device = torch.device(device)
        state = load_mtcnn_state(weights)
        self.nets = {}
        for name, cls in NETS.items():
            net = cls()
            net.load_state_dict(state[name])
            # channels-last: PyTorch's CPU max-pooling is about 3x faster on it (same results)
            self.nets[name] = net.eval().to(self.device).to(memory_format=torch.channels_last)

    def scales(self, height: int, width: int) -> list[float]:
        """The pyramid: the first scale maps ``min_face`` to P-Net's 12 pixels, then x ``factor``
        while the shorter side stays at least 12 pixels."""
        m = 12.0 / self.min_face
        side, out, s = min(height, width) * m, [], m
        while side >= 12:
            out.append(s)
            s *= self.factor
            side *= self.factor
        return out

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[list[MtcnnFace]]:
        """Faces of each RGB uint8 image (H, W, 3), in order of decreasing score."""
        results: list[list[MtcnnFace]] = [[] for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            arr = np.asarray(img)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {arr.dtype} {arr.shape}")
            groups.setdefault(arr.shape[:2], []).append(i)
        for (h, w), idx in groups.items():
            # uint8 bytes moved to the device, converted there
            pixels = torch.from_numpy(np.stack([np.asarray(images[i]) for i in idx])).to(self.device)
            batch = pixels.permute(0, 3, 1, 2).float()
            for k, faces in enumerate(self._cascade(batch, h, w)):
                results[idx[k]] = faces
        return results

    def _cascade(self, imgs: torch.Tensor, h: int, w: int) -> list[list[MtcnnFace]]:
        n = imgs.shape[0]
        boxes, owner = self._propose(imgs, h, w)
        if len(boxes):
            boxes, owner = self._refine(imgs, boxes, owner, h, w)
        points = torch.zeros(0, 5, 2)
        if len(boxes):
            boxes, owner, points = self._output(imgs, boxes, owner, h, w)
        out: list[list[MtcnnFace]] = [[] for _ in range(n)]
        for b, o, p in zip(boxes.tolist(), owner.tolist(), points.cpu().numpy()):
            # 1-based inclusive (the released code's convention) -> 0-based
            out[o].append(MtcnnFace((b[0] - 1, b[1] - 1, b[2] - 1, b[3] - 1), float(b[4]), p.astype(np.float64)))
        for faces in out:
            faces.sort(key=lambda f: -f.score)
        return out

    def _propose(self, imgs: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net over the pyramid: candidate boxes (x1, y1, x2, y2, score) and their image."""
        all_boxes, all_owner = [], []
        for scale in self.scales(h, w):
            size = (int(h * scale + 1), int(w * scale + 1))
            x = _normalise(F.interpolate(imgs, size=size, mode="area"))
            prob, reg = self.nets["pnet"](x)
            mask = prob >= self.thresholds[0]
            where = mask.nonzero()
            if not len(where):
                continue
            owner = where[:, 0]
            yx = where[:, 1:].to(torch.float32)
            # each P-Net output cell is a 12x12 window at stride 2 of the scaled image
            x1y1 = torch.floor((2 * yx.flip(1) + 1) / scale)
            x2y2 = torch.floor((2 * yx.flip(1) + 12) / scale)
            score = prob[mask]
            offs = reg.permute(0, 2, 3, 1)[mask]
            b = torch.cat([x1y1, x2y2, score[:, None], offs], dim=1)
            keep = _nms(b[:, :4], b[:, 4], owner, 0.5, plus_one=False)
            all_boxes.append(b[keep])
            all_owner.append(owner[keep])
        if not all_boxes:
            return torch.zeros(0, 5, device=imgs.device), torch.zeros(0, dtype=torch.long, device=imgs.device)
        b, owner = torch.cat(all_boxes), torch.cat(all_owner)
        keep = _nms(b[:, :4], b[:, 4], owner, 0.7, plus_one=False)
        b, owner = b[keep], owner[keep]
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        moved = torch.stack(
            [b[:, 0] + b[:, 5] * bw, b[:, 1] + b[:, 6] * bh, b[:, 2] + b[:, 7] * bw, b[:, 3] + b[:, 8] * bh, b[:, 4]],
            dim=1,
        )
        return _square(moved), owner

    def _refine(self, imgs, boxes, owner, h, w):
        """R-Net on 24x24 crops: re-scored, suppressed, regressed, squared."""
        crops, ok = _crops(imgs, boxes, owner, h, w, 24)
        boxes, owner = boxes[ok], owner[ok]
        prob, reg = self._batched("rnet", crops)
        keep = prob > self.thresholds[1]
        boxes = torch.cat([boxes[keep, :4], prob[keep, None]], dim=1)
        owner, reg = owner[keep], reg[keep]
        pick = _nms(boxes[:, :4], boxes[:, 4], owner, 0.7, plus_one=False)
        return _square(_regress(boxes[pick], reg[pick])), owner[pick]

    def _output(self, imgs, boxes, owner, h, w):
        """O-Net on 48x48 crops: final scores, landmarks, regression, suppression."""
        crops, ok = _crops(imgs, boxes, owner, h, w, 48)
        boxes, owner = boxes[ok], owner[ok]
        prob, reg, pts = self._batched("onet", crops)
        keep = prob > self.thresholds[2]
        boxes = torch.cat([boxes[keep, :4], prob[keep, None]], dim=1)
        owner, reg, pts = owner[keep], reg[keep], pts[keep]
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        px = bw[:, None] * pts[:, :5] + boxes[:, 0:1] - 1
        py = bh[:, None] * pts[:, 5:] + boxes[:, 1:2] - 1
        points = torch.stack([px, py], dim=2)
        boxes = _regress(boxes, reg)
        pick = _nms(boxes[:, :4], boxes[:, 4], owner, 0.7, plus_one=True, by_min=True)
        return boxes[pick], owner[pick], points[pick]

    def _batched(self, name: str, crops: torch.Tensor):
        if not len(crops):
            n_out = 3 if name == "onet" else 2
            widths = (1, 4, 10)[:n_out]
            return tuple(torch.zeros((0, k) if k > 1 else (0,), device=crops.device) for k in widths)
        step = self.crop_batch
        parts = [self.nets[name](_normalise(crops[i : i + step])) for i in range(0, len(crops), step)]
        return tuple(torch.cat(t) for t in zip(*parts))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return ((x - 127.5) * 0.0078125).contiguous(memory_format=torch.channels_last)


def _square(b: torch.Tensor) -> torch.Tensor:
    """Each box grown to a square about its centre (side = the longer side)."""
    b = b.clone()
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = torch.maximum(bw, bh)
    b[:, 0] = b[:, 0] + bw * 0.5 - side * 0.5
    b[:, 1] = b[:, 1] + bh * 0.5 - side * 0.5
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def _regress(b: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Move box edges by the regression, in units of the (inclusive) box size."""
    b = b.clone()
    bw = b[:, 2] - b[:, 0] + 1
    bh = b[:, 3] - b[:, 1] + 1
    b[:, 0] += reg[:, 0] * bw
    b[:, 1] += reg[:, 1] * bh
    b[:, 2] += reg[:, 2] * bw
    b[:, 3] += reg[:, 3] * bh
    return b


def _crops(imgs: torch.Tensor, boxes: torch.Tensor, owner: torch.Tensor, h: int, w: int, size: int):
    """Resized crops of the boxes' parts inside the image (as the PyTorch port takes them);
    returns the crops and which boxes had a non-empty part."""
    b = boxes[:, :4].trunc().to(torch.int64).tolist()
    owners = owner.tolist()  # one copy from the device, not one per box
    crops, ok = [], []
    for k, (x1, y1, x2, y2) in enumerate(b):
        x1, y1, x2, y2 = max(x1, 1), max(y1, 1), min(x2, w), min(y2, h)
        if x2 > x1 - 1 and y2 > y1 - 1:
            part = imgs[owners[k], :, y1 - 1 : y2, x1 - 1 : x2].unsqueeze(0)
            crops.append(F.interpolate(part, size=(size, size), mode="area"))
            ok.append(k)
    if not crops:
        return torch.zeros(0, 3, size, size, device=imgs.device), torch.zeros(0, dtype=torch.long, device=imgs.device)
    return torch.cat(crops), torch.tensor(ok, dtype=torch.long, device=imgs.device)


def _nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float, plus_one: bool, by_min: bool = False
) -> torch.Tensor:
    """Greedy non-maximum suppression within each group (image): indices kept, best first.

    Overlap is intersection over union, or over the smaller box (``by_min``, O-Net's last step);
    ``plus_one`` counts the right/bottom pixel in widths (the released code's last step)."""
    if not len(boxes):
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    b = boxes.double().cpu().numpy()  # greedy and sequential: on the host, whatever the device
    s = scores.double().cpu().numpy()
    g = groups.cpu().numpy()
    one = 1.0 if plus_one else 0.0
    area = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    keep = []
    for grp in np.unique(g):
        idx = np.nonzero(g == grp)[0]
        order = idx[np.argsort(-s[idx], kind="stable")]
        while order.size:
            i = order[0]
            keep.append(i)
            rest = order[1:]
            xx1 = np.maximum(b[i, 0], b[rest, 0])
            yy1 = np.maximum(b[i, 1], b[rest, 1])
            xx2 = np.minimum(b[i, 2], b[rest, 2])
            yy2 = np.minimum(b[i, 3], b[rest, 3])
            inter = np.maximum(0.0, xx2 - xx1 + one) * np.maximum(0.0, yy2 - yy1 + one)
            denom = np.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter
            overlap = np.divide(inter, denom, out=np.zeros_like(inter), where=denom > 0)
            order = rest[overlap <= iou]
    keep_arr = np.array(keep, dtype=np.int64)
    keep_arr = keep_arr[np.argsort(-s[keep_arr], kind="stable")]
    return torch.from_numpy(keep_arr).to(boxes.device)
