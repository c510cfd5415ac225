"""PyTorch's layouts (``export --layout torch``, ``transplant --layout torch``), checked
against independent numpy implementations of PyTorch's modules as its documentation
defines them (Linear, Conv2d with NCHW/OIHW, depthwise Conv2d, ConvTranspose2d, LSTM,
GRU, Embedding, LayerNorm, BatchNorm in eval mode): a Keras layer built in the test, its
weights exported ``--layout torch``, the numpy PyTorch-convention forward pass on those
weights equals Keras's output; and transplanting them back gives the Keras weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import keras_quiet, run
from safetensors.numpy import load_file
from test_bad_input import assert_clean_error


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


# -- PyTorch's modules in numpy (batch first; images NCHW, weights OIHW) ---------------------


def linear(x, w, b):
    return x @ w.T + b


def windows(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """[N, C, H, W] -> [N, C, H-kh+1, W-kw+1, kh, kw]"""
    return np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))


def conv2d(x, w, b, groups=1):
    o, i_g, kh, kw = w.shape
    win = windows(x, kh, kw)
    c = x.shape[1]
    out = []
    per_out = o // groups
    for k in range(o):
        g = k // per_out
        patch = win[:, g * i_g : (g + 1) * i_g]  # [N, I/g, H', W', kh, kw]
        out.append(np.einsum("nchwij,cij->nhw", patch, w[k]) + b[k])
    assert c == i_g * groups
    return np.stack(out, axis=1)


def conv_transpose2d(x, w, b):
    n, c, h, wd = x.shape
    _, o, kh, kw = w.shape
    out = np.zeros((n, o, h + kh - 1, wd + kw - 1))
    for i in range(kh):
        for j in range(kw):
            out[:, :, i : i + h, j : j + wd] += np.einsum("nchw,co->nohw", x, w[:, :, i, j])
    return out + b[None, :, None, None]


def lstm(x, w_ih, w_hh, b_ih, b_hh):
    hsz = w_hh.shape[1]
    h = np.zeros((x.shape[0], hsz))
    c = np.zeros_like(h)
    outs = []
    for t in range(x.shape[1]):
        gates = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = np.split(gates, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outs.append(h)
    return np.stack(outs, axis=1)


def gru(x, w_ih, w_hh, b_ih, b_hh):
    hsz = w_hh.shape[1]
    h = np.zeros((x.shape[0], hsz))
    outs = []
    for t in range(x.shape[1]):
        xi = x[:, t] @ w_ih.T + b_ih
        hh = h @ w_hh.T + b_hh
        xr, xz, xn = np.split(xi, 3, axis=1)
        hr, hz, hn = np.split(hh, 3, axis=1)
        r, z = sigmoid(xr + hr), sigmoid(xz + hz)
        n = np.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        outs.append(h)
    return np.stack(outs, axis=1)


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def batch_norm(x, w, b, mean, var, eps):  # eval mode, channels at dim 1
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * w.reshape(
        shape
    ) + b.reshape(shape)


def multihead_attention(x, w_in, b_in, w_out, b_out, heads):
    """nn.MultiheadAttention(E, heads, batch_first=True)(x, x, x), eval mode."""
    n, length, e = x.shape
    d = e // heads
    q, k, v = (x @ w.T + b for w, b in zip(np.split(w_in, 3), np.split(b_in, 3), strict=True))

    def split(a):
        return a.reshape(n, length, heads, d).transpose(0, 2, 1, 3)  # [N, H, L, D]

    scores = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(d)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    attn = scores / scores.sum(-1, keepdims=True)
    out = (attn @ split(v)).transpose(0, 2, 1, 3).reshape(n, length, e)
    return out @ w_out.T + b_out


def nchw(a):
    return np.transpose(a, (0, 3, 1, 2))


# -- the cases: a one-layer Keras model, an input, and the numpy PyTorch forward -----------


def _cases():
    keras = keras_quiet()
    L = keras.layers
    return {
        "dense": (
            (5,),
            L.Dense(3, name="fc"),
            lambda x, p: linear(x, p["fc.weight"], p["fc.bias"]),
        ),
        "conv": (
            (7, 7, 3),
            L.Conv2D(4, (3, 2), name="conv"),
            lambda x, p: nchw_out(conv2d(nchw(x), p["conv.weight"], p["conv.bias"])),
        ),
        "depthwise": (
            (6, 6, 3),
            L.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
            lambda x, p: nchw_out(conv2d(nchw(x), p["dw.weight"], p["dw.bias"], groups=3)),
        ),
        "transpose": (
            (4, 5, 3),
            L.Conv2DTranspose(2, (3, 2), name="up"),
            lambda x, p: nchw_out(conv_transpose2d(nchw(x), p["up.weight"], p["up.bias"])),
        ),
        "lstm": (
            (4, 3),
            L.LSTM(5, return_sequences=True, name="lstm"),
            lambda x, p: lstm(
                x,
                *(
                    p[f"lstm.lstm_cell.{k}"]
                    for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
                ),
            ),
        ),
        "gru": (
            (4, 3),
            L.GRU(5, return_sequences=True, name="gru"),
            lambda x, p: gru(
                x,
                *(
                    p[f"gru.gru_cell.{k}"]
                    for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
                ),
            ),
        ),
        "mha": (
            (5, 6),
            L.MultiHeadAttention(2, 3, name="mha"),
            lambda x, p: multihead_attention(
                x,
                p["mha.in_proj_weight"],
                p["mha.in_proj_bias"],
                p["mha.out_proj.weight"],
                p["mha.out_proj.bias"],
                2,
            ),
        ),
        "layernorm": (
            (6,),
            L.LayerNormalization(epsilon=1e-3, name="ln"),
            lambda x, p: layer_norm(x, p["ln.weight"], p["ln.bias"], 1e-3),
        ),
        "batchnorm": (
            (5, 5, 3),
            L.BatchNormalization(epsilon=1e-3, name="bn"),
            lambda x, p: nchw_out(
                batch_norm(
                    nchw(x),
                    p["bn.weight"],
                    p["bn.bias"],
                    p["bn.running_mean"],
                    p["bn.running_var"],
                    1e-3,
                )
            ),
        ),
    }


def nchw_out(a):
    return np.transpose(a, (0, 2, 3, 1))


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, Path, np.ndarray, np.ndarray, object]]:
    """name -> (model.keras, a second model of the same architecture with other weights,
    input, Keras's output, the numpy forward)."""
    keras = keras_quiet()
    root = tmp_path_factory.mktemp("torch_layout")
    rng = np.random.default_rng(0)
    out = {}
    for name, (shape, layer, forward) in _cases().items():
        inp = keras.Input(shape)
        model = keras.Model(inp, layer(inp, inp) if name == "mha" else layer(inp))
        weights = [rng.standard_normal(w.shape).astype("float32") for w in model.get_weights()]
        if name == "batchnorm":
            weights[3] = np.abs(weights[3]) + 0.5  # a variance
        model.set_weights(weights)
        x = rng.standard_normal((2, *shape)).astype("float32")
        y = np.asarray(model(x))
        model.save(root / f"{name}.keras")
        model.set_weights([rng.standard_normal(w.shape).astype("float32") for w in weights])
        model.save(root / f"{name}_other.keras")
        out[name] = (root / f"{name}.keras", root / f"{name}_other.keras", x, y, forward)
    return out


@pytest.mark.parametrize(
    "name",
    ["dense", "conv", "depthwise", "transpose", "lstm", "gru", "mha", "layernorm", "batchnorm"],
)
def test_torch_layout_computes_what_keras_computes(models, tmp_path: Path, name: str) -> None:
    path, other, x, y, forward = models[name]
    exported = tmp_path / "torch.safetensors"
    res = run("export", path, "--to", "safetensors", "--layout", "torch", "-o", exported)
    assert res.code == 0, res.err
    params = {k: v.astype(np.float64) for k, v in load_file(str(exported)).items()}
    np.testing.assert_allclose(forward(x.astype(np.float64), params), y, atol=2e-5, rtol=1e-5)
    # ... and back: the PyTorch tensors, transplanted into the other weights, are Keras's
    back = tmp_path / "back.keras"
    res = run("transplant", exported, other, "--layout", "torch", "--strict", "-o", back)
    assert res.code == 0, res.out + res.err
    assert run("diff", back, path).code == 0
    assert run("diff", other, path).code == 1  # the premise: other weights before


def test_keras_layout_round_trips_byte_for_byte(models, tmp_path: Path) -> None:
    path = models["conv"][0]
    exported = tmp_path / "k.safetensors"
    assert run("export", path, "-o", exported).code == 0
    with __import__("weightcli").open(path) as ckpt:
        for t in ckpt.tensors():
            assert load_file(str(exported))[t.name].tobytes() == ckpt.array(t.name).tobytes()
    back = tmp_path / "back.keras"
    assert run("transplant", exported, models["conv"][1], "--strict", "-o", back).code == 0
    assert run("diff", back, path).code == 0


def test_transplant_from_pytorch_names_with_a_map(models, tmp_path: Path) -> None:
    """A state dict named as a PyTorch module names it (``classifier.0.weight``): --map
    renames it to the names the Keras layer's rule expects; --dry-run shows the rules."""
    from safetensors.numpy import save_file

    path, other, x, y, forward = models["dense"]
    exported = tmp_path / "torch.safetensors"
    assert run("export", path, "--layout", "torch", "-o", exported).code == 0
    renamed = {k.replace("fc.", "classifier.0."): v for k, v in load_file(str(exported)).items()}
    theirs = tmp_path / "theirs.safetensors"
    save_file(renamed, str(theirs))
    plan = run(
        "transplant",
        theirs,
        other,
        "--layout",
        "torch",
        "--map",
        "classifier.0.*=fc.*",
        "--dry-run",
    )
    assert plan.code == 0, plan.err
    assert "Linear weight [out, in] -> Dense kernel [in, out]" in plan.out
    nothing = run("transplant", theirs, other, "--layout", "torch", "-o", tmp_path / "x.keras")
    assert_clean_error(nothing, "fc.weight")  # says which names it expects


def test_what_has_no_pytorch_counterpart_is_refused(tmp_path: Path) -> None:
    keras = keras_quiet()
    inp = keras.Input((4, 3))
    model = keras.Model(inp, keras.layers.GRU(2, reset_after=False, name="g")(inp))
    model.save(tmp_path / "g.keras")
    res = run("export", tmp_path / "g.keras", "--layout", "torch", "-o", tmp_path / "g.safetensors")
    assert_clean_error(res, "reset_after=False")
    assert not (tmp_path / "g.safetensors").exists()
    import h5py

    plain = tmp_path / "w.h5"  # an HDF5 file of arrays: no layer classes
    with h5py.File(plain, "w") as f:
        f["head/kernel"] = np.ones((3, 2), np.float32)
    res = run("export", plain, "--layout", "torch", "-o", tmp_path / "w.safetensors")
    assert_clean_error(res, "layer class is unknown")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.keras", "w.h5"]


def test_a_map_file_of_regular_expressions(models, tmp_path: Path) -> None:
    """Hugging Face style names (``layers.0.ffn.weight``) renamed by a JSON map file of
    regular expressions into the names the Keras layers' rules expect."""
    import json

    from safetensors.numpy import save_file

    path, other, x, y, forward = models["lstm"]
    exported = tmp_path / "torch.safetensors"
    assert run("export", path, "--layout", "torch", "-o", exported).code == 0
    theirs = {
        k.replace("lstm.lstm_cell.", "encoder.layers.0.rnn."): v
        for k, v in load_file(str(exported)).items()
    }
    save_file(theirs, str(tmp_path / "theirs.safetensors"))
    rules = tmp_path / "map.json"
    rules.write_text(json.dumps({r"re:encoder\.layers\.(\d+)\.rnn\.(.*)": r"lstm.lstm_cell.\2"}))
    back = tmp_path / "back.keras"
    res = run(
        "transplant",
        tmp_path / "theirs.safetensors",
        other,
        "--layout",
        "torch",
        "--map-file",
        rules,
        "--strict",
        "-o",
        back,
    )
    assert res.code == 0, res.out + res.err
    assert run("diff", back, path).code == 0
    rules.write_text(json.dumps({r"re:(unclosed": "x"}))
    assert_clean_error(
        run(
            "transplant",
            tmp_path / "theirs.safetensors",
            other,
            "--layout",
            "torch",
            "--map-file",
            rules,
            "-o",
            back,
        ),
        "not a regular expression",
    )


def test_export_renames_with_the_map_rules(models, tmp_path: Path) -> None:
    path, other, *_ = models["dense"]
    out = tmp_path / "t.safetensors"
    res = run("export", path, "--layout", "torch", "--map", r"re:fc\.(.*)=head.0.\1", "-o", out)
    assert res.code == 0, res.err
    assert sorted(load_file(str(out))) == ["head.0.bias", "head.0.weight"]
    back = tmp_path / "back.keras"
    assert (
        run(
            "transplant",
            out,
            other,
            "--layout",
            "torch",
            "--map",
            "head.0.*=fc.*",
            "--strict",
            "-o",
            back,
        ).code
        == 0
    )
    assert run("diff", back, path).code == 0
