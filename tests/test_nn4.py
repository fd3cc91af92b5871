"""Tests of openface_py.nets.nn4, nets.weights.

NN4-small2: architecture facts, weight loaders (pt, t7, CSV) and numeric checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import NN4_CSV, needs_nn4_csv
from t7_writer import TorchClass, write_t7

from openface_py.errors import WeightsError
from openface_py.io import list_images, load_image
from openface_py.nets.embedders import NN4Embedder
from openface_py.nets.nn4 import PARAMETER_COUNT, L2Pool2d, NN4Small2, count_parameters, preprocess
from openface_py.nets.weights import (
    build_model,
    csv_names,
    load_csv_folder,
    load_pt,
    load_t7,
    load_weights,
    save_csv_folder,
    validate_state_dict,
)

MISSING_IN_SHARED = {
    "inception_3c_3x3_conv2_w",
    "inception_4e_3x3_conv2_w",
    "inception_5a_1x1_conv_w",
    "inception_5a_3x3_conv2_w",
    "inception_5b_3x3_conv2_w",
}


@pytest.fixture(scope="module")
def random_state():
    torch.manual_seed(0)
    m = NN4Small2()
    # give BN statistics non-default values so loaders must carry them
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_parameter_count_and_stage_shapes():
    m = NN4Small2().eval()
    assert count_parameters(m) == PARAMETER_COUNT == 3_733_968
    shapes = {}
    for name in ("bn3", "incept3c", "incept4e", "incept5b"):
        m.get_submodule(name).register_forward_hook(lambda mod, i, o, n=name: shapes.__setitem__(n, tuple(o.shape[1:])))
    with torch.no_grad():
        out = m(torch.rand(2, 3, 96, 96))
    assert shapes["incept3c"] == (640, 6, 6) and shapes["incept4e"] == (1024, 3, 3)
    assert shapes["incept5b"] == (736, 3, 3) and shapes["bn3"] == (192, 24, 24)
    assert out.shape == (2, 128)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-6)


def test_stem_output_is_192x12x12():
    m = NN4Small2().eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        y = m.maxpool(
            m.lrn(m.relu(m.bn3(m.conv3(m.relu(m.bn2(m.conv2(m.lrn(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))))))
        )
        assert y.shape == (1, 192, 12, 12)
        f = m.incept3a(y)
    assert f.shape == (1, 256, 12, 12)


def test_branch_padding_is_centred_floor_half():
    """3a's pool branch (5x5) sits at rows/cols 3..7 of the 12x12 output, zeros around it."""
    m = NN4Small2().eval()
    x = torch.rand(1, 192, 12, 12)
    with torch.no_grad():
        out = m.incept3a(x)
        pool = m.incept3a.branches[2](x)
    assert pool.shape == (1, 32, 5, 5)
    ch = slice(128 + 32, 128 + 32 + 32)  # order: 3x3 (128), 5x5 (32), pool (32), 1x1 (64)
    assert torch.equal(out[0, ch, 3:8, 3:8], pool[0])
    mask = torch.ones(12, 12, dtype=torch.bool)
    mask[3:8, 3:8] = False
    assert (out[0, ch][:, mask] == 0).all()


def test_lrn_and_l2_pool_match_torch7_formulas():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 8, 5, 5)).astype(np.float32)
    # Torch7 SpatialCrossMapLRN: x / (k + alpha/size * sum_{window} x^2)^beta, window of 5 channels
    sq = np.pad(x**2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    win = sum(sq[:, i : i + 8] for i in range(5))
    expected = x / (1.0 + 1e-4 / 5 * win) ** 0.75
    got = NN4Small2().lrn(torch.from_numpy(x)).numpy()
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-6)
    # L2 pooling 3x3 stride 3: sqrt of the sum of squares of each window
    y = rng.normal(size=(1, 2, 6, 6)).astype(np.float32)
    exp = np.sqrt((y**2).reshape(1, 2, 2, 3, 2, 3).sum(axis=(3, 5)))
    assert np.allclose(L2Pool2d(3, 3)(torch.from_numpy(y)).numpy(), exp, rtol=1e-5)


def test_preprocess_is_rgb_over_255():
    faces = np.zeros((2, 96, 96, 3), np.uint8)
    faces[:, :, :, 0] = 255
    t = preprocess(faces)
    assert t.shape == (2, 3, 96, 96) and t[:, 0].min() == 1.0 and t[:, 1:].max() == 0.0


def test_csv_round_trip_and_pt_round_trip(tmp_path, random_state):
    save_csv_folder(random_state, tmp_path / "csv")
    loaded, missing = load_csv_folder(tmp_path / "csv")
    assert missing == []
    for k in csv_names():
        assert torch.equal(loaded[k], random_state[k]), k
    torch.save(loaded, tmp_path / "w.pt")
    again = load_pt(tmp_path / "w.pt")
    save_csv_folder(again, tmp_path / "csv2")
    for stem in csv_names().values():
        assert (tmp_path / "csv" / f"{stem}.csv").read_text() == (tmp_path / "csv2" / f"{stem}.csv").read_text()
    assert len(list((tmp_path / "csv").iterdir())) == 224


def test_pt_variants_and_errors(tmp_path, random_state):
    prefixed = {"module." + k: v for k, v in random_state.items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": prefixed}, tmp_path / "wrapped.pt")
    sd = load_pt(tmp_path / "wrapped.pt")
    assert torch.equal(sd["ln.weight"], random_state["ln.weight"])

    bad = dict(random_state)
    bad["incept4a.branches.0.3.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(WeightsError, match=r"incept4a.branches.0.3.weight has shape \(1, 2, 3, 3\)"):
        validate_state_dict(bad)
    short = {k: v for k, v in random_state.items() if k != "conv1.weight"}
    with pytest.raises(WeightsError, match="missing tensors: conv1.weight"):
        validate_state_dict(short)
    nan = dict(random_state)
    nan["ln.bias"] = torch.full((128,), float("nan"))
    with pytest.raises(WeightsError, match="NaN"):
        validate_state_dict(nan)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read"):
        load_pt(tmp_path / "junk.pt")
    with pytest.raises(WeightsError, match="unknown weights format"):
        (tmp_path / "w.h5").write_bytes(b"x")
        load_weights(tmp_path / "w.h5")


def test_csv_errors(tmp_path, random_state):
    save_csv_folder(random_state, tmp_path)
    (tmp_path / "inception_4a_pool_conv_b.csv").write_text("1.0,2.0")
    with pytest.raises(WeightsError, match="inception_4a_pool_conv_b.csv: has 2 values, expected 128"):
        load_csv_folder(tmp_path)
    (tmp_path / "inception_4a_pool_conv_b.csv").write_text("a,b")
    with pytest.raises(WeightsError, match="not a comma-separated list"):
        load_csv_folder(tmp_path)
    (tmp_path / "inception_4a_pool_conv_b.csv").unlink()
    with pytest.raises(WeightsError, match="1 weight tensors missing"):
        load_csv_folder(tmp_path)


def _torch7_tree(state: dict, legacy_bn_index: int = 3) -> TorchClass:
    """A module tree shaped like OpenFace's nn4.small2.v1.t7 (nn.Sequential / nn.Inception /
    nn.DepthConcat), holding ``state``'s tensors in Torch7 layouts."""
    model = NN4Small2()
    layers = model.torch7_layers()
    n_bn = 0

    def layer(path: str) -> TorchClass:
        nonlocal n_bn
        mod = model.get_submodule(path)
        if isinstance(mod, torch.nn.BatchNorm2d):
            n_bn += 1
            fields = {
                "weight": state[f"{path}.weight"].numpy(),
                "bias": state[f"{path}.bias"].numpy(),
                "eps": 1e-5,
            }
            if n_bn == legacy_bn_index:  # old nn stored running_std = 1/sqrt(var + eps)
                fields["running_std"] = (1.0 / np.sqrt(state[f"{path}.running_var"].numpy() + 1e-5)).astype(np.float32)
            else:
                fields["running_var"] = state[f"{path}.running_var"].numpy()
            fields["running_mean"] = state[f"{path}.running_mean"].numpy()
            return TorchClass("nn.SpatialBatchNormalization", **fields)
        w = state[f"{path}.weight"].numpy()
        if isinstance(mod, torch.nn.Linear):
            return TorchClass("nn.Linear", weight=w, bias=state[f"{path}.bias"].numpy())
        # SpatialConvolutionMM keeps its weight as (out, in*kh*kw)
        return TorchClass(
            "nn.SpatialConvolutionMM",
            weight=w.reshape(w.shape[0], -1),
            bias=state[f"{path}.bias"].numpy(),
            kW=w.shape[3],
        )

    relu = TorchClass("nn.ReLU")
    stem = []
    for path, _ in layers[:6]:
        stem += [layer(path), relu]
    blocks = []
    for block in ("3a", "3b", "3c", "4a", "4e", "5a", "5b"):
        branches: dict[str, list] = {}
        for path, _ in layers:
            if path.startswith(f"incept{block}."):
                b = path.split(".")[2]
                is_pool_branch = path.split(".")[3] == "1" and b not in branches  # [pool, conv, BN, ReLU]
                branches.setdefault(b, [TorchClass("nn.SpatialMaxPooling")] if is_pool_branch else [])
                branches[b] += [layer(path), relu]
        seqs = [TorchClass("nn.Sequential", modules=mods) for mods in branches.values()]
        if block in ("3c", "4e"):  # pool branch without a projection holds no parameters
            seqs.append(TorchClass("nn.Sequential", modules=[TorchClass("nn.SpatialMaxPooling")]))
        blocks.append(TorchClass("nn.Inception", modules=[TorchClass("nn.DepthConcat", modules=seqs)]))
    head = [TorchClass("nn.SpatialAveragePooling"), TorchClass("nn.View"), layer("ln"), TorchClass("nn.Normalize")]
    return TorchClass("nn.Sequential", modules=stem + blocks + head, train=False)


def test_t7_reader_on_a_torch7_file(tmp_path, random_state):
    path = tmp_path / "nn4.small2.test.t7"
    write_t7(path, _torch7_tree(random_state))
    sd = load_t7(path)
    for k, v in random_state.items():
        if k.endswith("num_batches_tracked"):
            continue
        tol = 1e-4 if "running_var" in k else 0
        assert torch.allclose(sd[k], v, rtol=tol, atol=tol), k
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        a = build_model(state=random_state)(x)
        b = build_model(path=path)(x)
    assert torch.allclose(a, b, atol=1e-5)


def test_t7_reader_rejects_bad_files(tmp_path, random_state):
    (tmp_path / "junk.t7").write_bytes(b"\x07\x00\x00\x00garbage")
    with pytest.raises(WeightsError, match="cannot read as a Torch7 file"):
        load_t7(tmp_path / "junk.t7")
    tree = _torch7_tree(random_state)
    tree.fields["modules"] = tree.fields["modules"][:-2]  # drop the Linear layer
    write_t7(tmp_path / "short.t7", tree)
    with pytest.raises(WeightsError, match="found 74 parametrised layers"):
        load_t7(tmp_path / "short.t7")


def test_nn4_embedder_batches_agree(aligned_openface, random_state):
    emb = NN4Embedder(random_state, name="nn4-random-test")
    faces = [load_image(aligned_openface / p) for p in list_images(aligned_openface)[:40]]
    a = emb.embed(faces, batch_size=32)
    b = np.concatenate([emb.embed([f], batch_size=1) for f in faces])
    assert a.shape == (40, 128) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.abs(a - b).max() < 1e-5
    with pytest.raises(ValueError, match="expected an aligned RGB uint8 image of shape \\(96, 96, 3\\)"):
        emb.embed([np.zeros((150, 150, 3), np.uint8)])


# ---- the released nn4.small2.v1 tensors (../shared) -------------------------------------


@needs_nn4_csv
def test_shared_csv_export_maps_onto_every_module():
    with pytest.raises(WeightsError, match="5 weight tensors missing"):
        load_csv_folder(NN4_CSV)
    sd, missing = load_csv_folder(NN4_CSV, allow_missing=True)
    assert set(missing) == MISSING_IN_SHARED
    present = {p.stem for p in NN4_CSV.glob("*.csv")}
    assert present - set(csv_names().values()) == {"inception_5a_3x3_conv2_m", "inception_5a_3x3_conv2_v"}

    def raw(stem):
        return np.array((NN4_CSV / f"{stem}.csv").read_text().split(","), dtype=np.float32)

    # hand-checked placements (independent of csv_names): Torch7 name -> module here
    expect = {
        "conv1_w": "conv1.weight",
        "bn3_v": "bn3.running_var",
        "inception_3a_pool_conv_w": "incept3a.branches.2.1.weight",
        "inception_3b_1x1_bn_m": "incept3b.branches.3.1.running_mean",
        "inception_3c_5x5_conv2_w": "incept3c.branches.1.3.weight",
        "inception_4e_5x5_bn2_w": "incept4e.branches.1.4.weight",
        "inception_5a_pool_conv_w": "incept5a.branches.1.1.weight",
        "inception_5b_1x1_conv_b": "incept5b.branches.2.0.bias",
        "inception_5b_3x3_bn2_v": "incept5b.branches.0.4.running_var",
        "dense_w": "ln.weight",
    }
    for stem, key in expect.items():
        assert np.array_equal(sd[key].numpy().ravel(), raw(stem)), stem


@needs_nn4_csv
def test_released_bn_statistics_fit_activations_on_aligned_faces(aligned_openface):
    """Independent numeric check of layers, loader and preprocessing: each released BN layer's
    running mean/var (accumulated by OpenFace on its training faces) must match the statistics
    of the activations our network computes on real OpenFace-aligned faces. Layers before the
    first missing tensor are checked; RGB must fit better than BGR (channel order)."""
    sd, _ = load_csv_folder(NN4_CSV, allow_missing=True)
    m = NN4Small2()
    m.load_state_dict(sd)
    m.eval()
    layers = [
        "bn1",
        "bn2",
        "bn3",
        "incept3a.branches.0.4",
        "incept3a.branches.3.1",
        "incept3b.branches.1.4",
        "incept3b.branches.2.2",
        "incept3c.branches.0.1",
        "incept3c.branches.1.4",
    ]
    acts = {}
    for name in layers:
        m.get_submodule(name).register_forward_hook(lambda mod, i, o, n=name: acts.__setitem__(n, i[0]))
    faces = np.stack([load_image(aligned_openface / p) for p in list_images(aligned_openface)])

    def fit(batch):
        with torch.no_grad():
            m(preprocess(batch))
        out = {}
        for name in layers:
            bn = m.get_submodule(name)
            a = acts[name]
            mu, var = a.mean(dim=(0, 2, 3)).numpy(), a.var(dim=(0, 2, 3)).numpy()
            out[name] = (
                np.corrcoef(mu, bn.running_mean.numpy())[0, 1],
                np.corrcoef(np.log(var), np.log(bn.running_var.numpy()))[0, 1],
            )
        return out

    rgb = fit(faces)
    for name, (c_mean, c_var) in rgb.items():
        assert c_mean > 0.95 and c_var > 0.98, (name, c_mean, c_var)
    bgr = fit(faces[..., ::-1].copy())
    assert rgb["bn1"][0] > bgr["bn1"][0] + 0.1


@pytest.mark.skipif(
    __import__("openface_py.nets.embed", fromlist=["x"]).find_nn4_small2_v1() is None,
    reason="OpenFace's nn4.small2.v1 weights are not installed (openface-py models download nn4.small2.v1)",
)
def test_official_weights_reproduce_openface_compare_demo():
    """Golden values published by OpenFace ("Demo 2: comparing two images", nn4.small2.v1):
    squared L2 lennon-1/lennon-2 0.763, lennon-1/clapton-1 1.132, clapton-1/clapton-2 0.318."""
    from conftest import EXAMPLES

    from openface_py.pipeline import FacePipeline

    pipe = FacePipeline.create("nn4.small2.v1")
    rep = {n: pipe.process(load_image(EXAMPLES / f"{n}.jpg"), multi=False)[0].embedding
           for n in ("lennon-1", "lennon-2", "clapton-1", "clapton-2")}  # fmt: skip
    for a, b, want in (("lennon-1", "lennon-2", 0.763), ("lennon-1", "clapton-1", 1.132),
                       ("clapton-1", "clapton-2", 0.318)):  # fmt: skip
        assert abs(float(np.sum((rep[a] - rep[b]) ** 2)) - want) < 0.1, (a, b)


def test_fast_lrn_equals_torch_lrn_forward_and_backward():
    from openface_py.nets.nn4 import CrossChannelLRN

    torch.manual_seed(0)
    for shape in [(3, 64, 12, 12), (2, 192, 6, 6), (1, 4, 3, 3)]:
        x = (torch.randn(shape) * 20).requires_grad_()
        ref = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)(x)
        out = CrossChannelLRN(5, alpha=1e-4, beta=0.75, k=1.0)(x)
        assert torch.allclose(out, ref, rtol=1e-6, atol=1e-5)
        g = torch.randn(shape)
        (gr,) = torch.autograd.grad(ref, x, g)
        (go,) = torch.autograd.grad(out, x, g)
        assert torch.allclose(go, gr, rtol=1e-5, atol=1e-5)
        xc = x.detach().contiguous(memory_format=torch.channels_last)
        assert torch.allclose(CrossChannelLRN()(xc), ref.detach(), rtol=1e-6, atol=1e-5)
