"""``weightcli report``, ``diff --html``, ``--report-html`` and ``inspect``'s sparkline:
the figures against numpy (``np.histogram``, ``np.linalg.svd``) on every sample model,
the flags, the comparison, escaping, and every refusal. The page in a real browser is
test_report_browser.py."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import SAMPLES, run

from weightcli import api
from weightcli.batch import discover
from weightcli.commands import inspect as inspect_cmd
from weightcli.commands import report as report_cmd
from weightcli.commands.diff import DiffRequest
from weightcli.distribution import (
    BINS,
    EXACT_SIDE,
    EXACT_SIDE_MAX,
    SPARK_CELLS,
    WHOLE_ELEMS,
    Flag,
    GramSpectrum,
    Histogram,
    kernel_spectrum,
    peer_outliers,
    power_spectral_norm,
    sparkline,
    spectral_from_singular,
)
from weightcli.errors import ParameterError
from weightcli.page import render

SAMPLE_MODELS = [it.path for it in discover([str(SAMPLES)], True)]


def test_every_sample_model_is_found() -> None:
    # The premise of the oracle test below: it runs on every format the samples hold.
    names = " ".join(str(p) for p in SAMPLE_MODELS)
    for part in ("cnn.keras", "mlp_ckpt", "mlp_tfsave", "mlp_int8.keras", "mlp_sharded"):
        assert part in names
    assert len(SAMPLE_MODELS) >= 15


@pytest.mark.parametrize("path", SAMPLE_MODELS, ids=lambda p: p.name)
def test_histograms_and_spectra_match_numpy(path: Path) -> None:
    """Streamed in blocks of 97 elements (many per tensor), each histogram equals
    np.histogram over the whole tensor, and each kernel's figures np.linalg.svd's."""
    result = inspect_cmd.run(
        inspect_cmd.InspectRequest(histograms=True, spectral=True, block_elems=97), path
    )
    checked = spectral = 0
    with api.open(path) as ckpt:
        for rep in result.tensors:
            if rep.stats is None or rep.stats.min is None:
                assert rep.histogram is None
                continue
            values = np.asarray(ckpt.array(rep.info.name))
            flat = values.reshape(-1)
            if flat.dtype.kind not in "fiu":
                flat = flat.astype(np.float32)
            finite = flat[np.isfinite(flat)] if flat.dtype.kind == "f" else flat
            lo, hi = float(finite.min()), float(finite.max())
            if lo == hi:
                lo, hi = lo - 0.5, hi + 0.5
            expected, edges = np.histogram(finite, bins=BINS, range=(lo, hi))
            assert rep.histogram is not None
            np.testing.assert_array_equal(rep.histogram.counts, expected)
            np.testing.assert_allclose(rep.histogram.edges, edges)
            checked += 1
            if rep.spectral is not None:
                w = values.astype(np.float64).reshape(-1, values.shape[-1])
                s = np.linalg.svd(w, compute_uv=False)
                assert rep.spectral.method == "exact"
                np.testing.assert_allclose(rep.spectral.spectral_norm, s[0], rtol=1e-9)
                np.testing.assert_allclose(
                    rep.spectral.stable_rank, (s**2).sum() / s[0] ** 2, rtol=1e-9
                )
                p = s / s.sum()
                p = p[p > 0]
                np.testing.assert_allclose(
                    rep.spectral.effective_rank, np.exp(-(p * np.log(p)).sum()), rtol=1e-6
                )
                spectral += 1
    assert checked > 0
    kernels = [
        r
        for r in result.tensors
        if r.info.is_float and len(r.info.shape) >= 2 and r.stats and not r.stats.nonfinite
    ]
    assert spectral == len(kernels)


def test_power_iteration_above_the_cap() -> None:
    """The spectral norm by power iteration (the path of a matrix too big for the exact
    one), streamed in blocks that cut rows: a lower bound (up to float32 rounding) within
    1e-6 of the truth when the spectrum has a gap."""
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal(600), rng.standard_normal(500)
    w = (5 * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))).astype(np.float32)
    w += rng.standard_normal(w.shape).astype(np.float32) * 1e-3
    true = np.linalg.svd(w.astype(np.float64), compute_uv=False)[0]
    flat = w.reshape(-1)
    passes = 0

    def blocks():  # runs of 777 elements: rows are cut across blocks
        nonlocal passes
        passes += 1
        return (flat[i : i + 777] for i in range(0, flat.size, 777))

    fig = power_spectral_norm(600, 500, blocks, float((w.astype(np.float64) ** 2).sum()))
    assert fig is not None and fig.method == "power iteration"
    assert passes == 8 and fig.effective_rank is None
    assert fig.spectral_norm <= true * (1 + 1e-6)
    np.testing.assert_allclose(fig.spectral_norm, true, rtol=1e-6)


def test_a_big_kernel_in_a_file_takes_the_power_path(tmp_path: Path) -> None:
    src = tmp_path / "big.h5"
    rng = np.random.default_rng(2)
    w = rng.standard_normal((600, 2100)).astype(np.float32)  # 2100 columns: over the cap
    with h5py.File(src, "w") as f:
        f["dense/kernel:0"] = w
    rep = report_cmd.run(report_cmd.ReportRequest(), src).figures.tensors[0]
    assert rep.spectral is not None and rep.spectral.method == "power iteration"
    true = np.linalg.svd(w.astype(np.float64), compute_uv=False)[0]
    assert 0.9 * true < rep.spectral.spectral_norm <= true * (1 + 1e-6)


def test_exact_side_sets_which_kernels_get_every_singular_value(tmp_path: Path) -> None:
    """A 300-wide kernel is past the default cap (power iteration, no effective rank);
    ``--exact-side 512`` gives its exact figures (numpy's SVD), in memory and streamed
    (a kernel over the in-memory size), and the page and JSON say which cap applied."""
    src = tmp_path / "w.h5"
    rng = np.random.default_rng(5)
    w = rng.standard_normal((700, 300)).astype(np.float32)
    with h5py.File(src, "w") as f:
        f["dense/kernel:0"] = w
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    p = s / s.sum()
    assert EXACT_SIDE < 300
    default = report_cmd.run(report_cmd.ReportRequest(), src)
    fig = default.figures.tensors[0].spectral
    assert fig is not None and fig.method == "power iteration" and fig.effective_rank is None
    streamed = []

    class Gram(GramSpectrum):
        def __init__(self, rows: int, cols: int) -> None:
            streamed.append((rows, cols))
            super().__init__(rows, cols)

    for whole in (WHOLE_ELEMS, 1000):  # in memory, then streamed in blocks
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(inspect_cmd, "WHOLE_ELEMS", whole)
            mp.setattr(inspect_cmd, "GramSpectrum", Gram)
            request = report_cmd.ReportRequest(block_elems=997, exact_side=512)
            result = report_cmd.run(request, src)
        assert streamed == ([] if whole == WHOLE_ELEMS else [(700, 300)])
        fig = result.figures.tensors[0].spectral
        assert fig is not None and fig.method == "exact", whole
        np.testing.assert_allclose(fig.spectral_norm, s[0], rtol=1e-9)
        np.testing.assert_allclose(fig.effective_rank, np.exp(-(p * np.log(p)).sum()), rtol=1e-6)
    assert result.to_json()["exact_side"] == 512
    assert "smaller side is at most 512 " in render(result)
    assert f"smaller side is at most {EXACT_SIDE} " in render(default)
    page = tmp_path / "page.html"
    res = run("report", src, "-o", page, "--exact-side", "512", "--json")
    assert res.code == 0 and res.json()["exact_side"] == 512
    tensor = res.json()["inspect"]["tensors"][0]
    assert tensor["spectral"]["method"] == "exact"
    assert api.report(src, exact_side=0).figures.tensors[0].spectral.method == "power iteration"


@pytest.mark.parametrize("value", ["-1", str(EXACT_SIDE_MAX + 1), "1.5"])
def test_exact_side_out_of_range_is_refused(tmp_path: Path, value: str) -> None:
    page = tmp_path / "page.html"
    res = run("report", SAMPLES / "cnn.keras", "-o", page, "--exact-side", value)
    assert res.code == 2 and not page.exists()
    assert "--exact-side" in res.err and "Traceback" not in res.err
    with pytest.raises(ParameterError):
        report_cmd.ReportRequest(exact_side=EXACT_SIDE_MAX + 1)
    with pytest.raises(ParameterError, match="needs spectral"):  # else quietly unused
        inspect_cmd.InspectRequest(exact_side=512)


def test_power_iteration_where_float32_products_overflow() -> None:
    """Float32 rows whose products overflow float32 (values near 1e19, a spectral norm
    near 5e20) are multiplied in float64 instead: a finite estimate, no warning."""
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((600, 700)) * 1e19).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = kernel_spectrum(w, finite=True)
    true = np.linalg.svd(w.astype(np.float64), compute_uv=False)[0]
    assert fig is not None and fig.method == "power iteration"
    assert 0.9 * true < fig.spectral_norm <= true * (1 + 1e-6)


def test_gram_is_the_same_for_any_block_split() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 7))
    figs = []
    for step in (1, 5, 7, 13, 280):
        g = GramSpectrum(40, 7)
        flat = w.reshape(-1)
        for i in range(0, flat.size, step):
            g.update(flat[i : i + step])
        figs.append(g.result())
    s = np.linalg.svd(w, compute_uv=False)
    for f in figs:
        assert f is not None
        np.testing.assert_allclose(f.spectral_norm, s[0], rtol=1e-12)


def test_spectral_figures_of_known_spectra() -> None:
    f = spectral_from_singular(4, 4, np.array([2.0, 2.0, 2.0, 2.0]), "exact")
    assert f.stable_rank == pytest.approx(4) and f.effective_rank == pytest.approx(4)
    f = spectral_from_singular(4, 4, np.array([3.0, 0, 0, 0]), "exact")
    assert f.stable_rank == pytest.approx(1) and f.effective_rank == pytest.approx(1)
    zero = spectral_from_singular(4, 4, np.zeros(4), "exact")
    assert zero.spectral_norm == 0 and zero.stable_rank is None


def test_histogram_edges_and_constant_tensors() -> None:
    h = Histogram(2.0, 2.0)
    h.update(np.full(10, 2.0, dtype=np.float32))
    expected = np.histogram(np.full(10, 2.0), bins=BINS)[0]
    np.testing.assert_array_equal(h.counts, expected)
    h = Histogram(-1.0, 1.0)
    h.update(np.array([-1.0, 1.0, np.nan, np.inf, 0.0]))
    assert h.counts.sum() == 3 and h.counts[0] == 1 and h.counts[-1] == 1
    with pytest.raises(ValueError):
        Histogram(1.0, 0.0)


@pytest.mark.parametrize("kernel", [True, False], ids=["native", "numpy"])
def test_the_float32_fast_path_counts_as_numpy(kernel: bool, monkeypatch) -> None:
    """Float32 values known to be in range are binned in float32 and only values at an
    edge against numpy's edges: the counts equal np.histogram's, on values that sit
    exactly on edges and one float32 step either side, and far from zero; by the native
    kernel and by the numpy code it replaces."""
    from weightcli import native

    assert native.kernels is not None  # premise: both paths are there to test
    if not kernel:
        monkeypatch.setattr(native, "kernels", None)
    rng = np.random.default_rng(1)
    fast = at_edges = 0
    for trial in range(1000):
        kind, n = trial % 4, int(rng.integers(1, 3000))
        if kind == 0:
            x = rng.standard_normal(n).astype(np.float32) * np.float32(10.0 ** rng.integers(-8, 8))
        elif kind == 1:  # a grid: many values on edges
            x = (rng.integers(-50, 50, n) * 0.01).astype(np.float32)
        elif kind == 2:  # far from zero: the edges are rounded
            x = (1000 + rng.standard_normal(n) * 10.0 ** rng.integers(-1, 1)).astype(np.float32)
        else:  # every edge and its float32 neighbours
            lo = np.float32(rng.standard_normal())
            e = np.linspace(float(lo), float(lo) + 3, BINS + 1, dtype=np.float32)
            x = np.concatenate([e, np.nextafter(e, -np.inf), np.nextafter(e, np.inf)])
            x = x[(x >= e[0]) & (x <= e[-1])]
        h = Histogram(float(x.min()), float(x.max()), inside=True)
        h.update(x)
        np.testing.assert_array_equal(h.counts, np.histogram(x, BINS, (h.lo, h.hi))[0])
        fast += h._fast is not None
        at_edges += kind == 3 and h._fast is not None
    assert fast > 900 and at_edges > 200  # premise: the fast path did the counting


def test_bins_narrower_than_float32_are_counted_in_float64(tmp_path: Path) -> None:
    """1000 +- 0.0005 in float32: numpy refuses float32 input over that range (too many
    bins for the data range); the report counts the values in float64 instead."""
    x = (1000 + np.random.default_rng(0).standard_normal(500) * 2e-4).astype(np.float32)
    h = Histogram(float(x.min()), float(x.max()), inside=True)
    h.update(x)
    with pytest.raises(ValueError):
        np.histogram(x, BINS, (h.lo, h.hi))  # premise: numpy's float32 route refuses
    np.testing.assert_array_equal(
        h.counts, np.histogram(x.astype(np.float64), BINS, (h.lo, h.hi))[0]
    )
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f["dense/moving_variance:0"] = x
    res = run("report", path, "-o", tmp_path / "page.html")
    assert res.code == 0, res.err


def test_spectra_on_helper_threads_leave_blas_as_it_was() -> None:
    from threadpoolctl import threadpool_info

    before = [(i["internal_api"], i["num_threads"]) for i in threadpool_info()]
    path = SAMPLES / "cnn.weights.h5"
    result = inspect_cmd.run(inspect_cmd.InspectRequest(histograms=True, spectral=True), path)
    assert any(rep.spectral is not None for rep in result.tensors)  # premise: solved
    assert [(i["internal_api"], i["num_threads"]) for i in threadpool_info()] == before


@pytest.mark.parametrize("side", [EXACT_SIDE, 512])
def test_the_solver_holds_no_more_kernels_than_its_helpers_and_pending(
    side: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory stays bounded: once ``submit`` returns, at most workers + pending kernels
    are unsolved (one helper under the default cap, two above it), and that many were
    (the helpers really ran while the caller went on)."""
    import threading
    import time

    from weightcli import distribution

    lock = threading.Lock()
    solved = 0

    def slow(w: np.ndarray, finite: bool, exact_side: int) -> None:
        nonlocal solved
        time.sleep(0.01)
        with lock:
            solved += 1

    monkeypatch.setattr(distribution, "kernel_spectrum", slow)
    workers = distribution.helpers(side)
    assert workers == (1 if side == EXACT_SIDE else 2)
    solver = distribution.Solver(workers)
    most = 0
    try:
        for n in range(1, 13):
            solver.submit(np.zeros((2, 2)), lambda figures: None, True, side)
            with lock:
                most = max(most, n - solved)
    finally:
        solver.close()
    assert solved == 12 and most == workers


def test_sparkline_sums_the_report_bins() -> None:
    counts = np.zeros(BINS, dtype=np.int64)
    counts[0:4] = 1  # cell 0: 4
    counts[8] = 16  # cell 2: the fullest
    line = sparkline(counts)
    assert len(line) == SPARK_CELLS
    assert line[2] == "█" and line[0] == "▂" and line[1] == "\u00a0"
    assert sparkline(np.zeros(BINS, dtype=np.int64)) == "\u00a0" * SPARK_CELLS


def test_inspect_sparkline_uses_the_same_bins() -> None:
    path = SAMPLES / "cnn.keras"
    res = run("inspect", path, "--sparkline")
    assert res.code == 0, res.err
    result = inspect_cmd.run(inspect_cmd.InspectRequest(histograms=True), path)
    for rep in result.tensors:
        assert rep.histogram is not None
        assert sparkline(rep.histogram.counts) in res.out
    plain = run("inspect", path)  # not a terminal: no sparkline, no second pass
    assert "Distribution" not in plain.out and "Distribution" in res.out
    assert "histogram" not in run("inspect", path, "--json").out


@pytest.mark.parametrize(
    "args",
    [("--sparkline", "--no-stats"), ("--sparkline", "--layers")],
)
def test_sparkline_where_it_cannot_show_is_refused(args: tuple[str, ...]) -> None:
    res = run("inspect", SAMPLES / "cnn.keras", *args)
    assert res.code == 2 and "--sparkline" in res.err


def _with_dead_and_nan(tmp_path: Path) -> Path:
    out = tmp_path / "bad.h5"
    shutil.copy(SAMPLES / "mlp_nan.h5", out)
    with h5py.File(out, "r+") as f:
        names: list[str] = []
        f.visit(lambda n: names.append(n) if n.endswith("dense_1/kernel") else None)
        ds = f[names[0]]
        ds[...] = np.zeros(ds.shape, ds.dtype)
    return out


def test_flags_for_nan_inf_and_a_dead_layer(tmp_path: Path) -> None:
    bad = _with_dead_and_nan(tmp_path)
    result = report_cmd.run(report_cmd.ReportRequest(), bad)
    kinds = {(f.kind, f.tensor) for f in result.flags}
    assert ("nan", "dense_2/kernel") in kinds and ("inf", "dense_2/kernel") in kinds
    assert ("dead", "dense_1/kernel") in kinds
    assert [f.kind for f in result.flags][0] == "nan"  # the worst first
    clean = report_cmd.run(report_cmd.ReportRequest(), SAMPLES / "cnn.keras")
    assert clean.flags == []


def test_exploding_kernel_is_flagged(tmp_path: Path) -> None:
    out = tmp_path / "big.keras"
    assert run("scale", SAMPLES / "cnn.keras", "1e4", "-s", "logits/kernel", "-o", out).code == 0
    flags = report_cmd.run(report_cmd.ReportRequest(), out).flags
    assert [(f.kind, f.tensor) for f in flags] == [("exploding", "logits/kernel")]


def test_peer_outliers() -> None:
    peers = {("Dense", "kernel"): [(f"d{i}/kernel", 0.1 * (1 + 0.05 * i)) for i in range(6)]}
    assert peer_outliers(peers) == []
    peers[("Dense", "kernel")].append(("far/kernel", 30.0))
    got = peer_outliers(peers)
    assert [f.tensor for f in got] == ["far/kernel"] and "above" in got[0].text
    few = {("Dense", "kernel"): [("a", 1.0), ("b", 100.0)]}  # too few peers to judge
    assert peer_outliers(few) == []


def test_against_a_scaled_copy(tmp_path: Path) -> None:
    src = SAMPLES / "cnn.keras"
    out = tmp_path / "half.keras"
    page = tmp_path / "half.html"
    res = run("scale", src, "0.5", "--kind", "kernel", "-o", out, "--report-html", page)
    assert res.code == 0, res.err
    assert f"wrote the report page {page}" in res.err
    result = report_cmd.run(report_cmd.ReportRequest(against=src), out)
    assert result.diff is not None
    changed = {r.name for r in result.diff.rows if str(r.status) == "differs"}
    assert changed == {"conv/kernel", "logits/kernel"}
    assert {o.name for o in result.overlays} == changed
    with api.open(src) as a, api.open(out) as b:
        for o in result.overlays:
            before, after = a.array(o.name), b.array(o.name)
            lo = min(before.min(), after.min())
            hi = max(before.max(), after.max())
            for h, v in ((o.before, before), (o.after, after)):
                want = np.histogram(v.reshape(-1), bins=BINS, range=(float(lo), float(hi)))[0]
                np.testing.assert_array_equal(h.counts, want)
    for r in result.diff.rows:
        if r.name in changed:
            assert r.rel_l2 == pytest.approx(0.5, rel=1e-6)
    html = page.read_text()
    assert html == render(result)  # --report-html draws what report --against draws
    assert html.count('class="hist"') == len(result.figures.tensors) + len(changed)


def test_a_pruned_copy_shows_zeros_gained(tmp_path: Path) -> None:
    out, page = tmp_path / "p.keras", tmp_path / "p.html"
    res = run("prune", SAMPLES / "cnn.keras", "--sparsity", "0.5", "-o", out, "--report-html", page)
    assert res.code == 0, res.err
    html = page.read_text()
    # after minus before, in points: pruning to 50% gains 50 points of zeros
    assert html.count('data-v="0.5">+50.00</td>') == 2


def test_diff_html_is_the_report_page(tmp_path: Path) -> None:
    a, b = SAMPLES / "mlp_nan.h5", SAMPLES / "mlp.weights.h5"
    page = tmp_path / "d.html"
    res = run("diff", a, b, "--html", page)
    assert res.code == 1  # the diff's own verdict and exit code are kept
    html = page.read_text()
    # diff's tolerances and NaN rule, not the report's default (NaN equal to NaN)
    same = report_cmd.ReportRequest(against=b, pairing=DiffRequest())
    assert html == render(report_cmd.run(same, a))
    assert 'data-flag="nan"' in html and "DIFFERENT" in html
    page2 = tmp_path / "e.html"
    assert run("diff", a, a, "--html", page2, "--nan-equal").code == 0
    assert "EQUAL" in page2.read_text()
    assert run("diff", a, a, "--html", page2).code == 1  # NaN equals nothing, as diff says
    assert "DIFFERENT" in page2.read_text()


def test_every_diff_option_reaches_its_page(tmp_path: Path) -> None:
    """diff --html compares as the diff did: here across dtypes (--ignore-dtype) and with
    a tolerance, where the default page would see a dtype change."""
    src, half = SAMPLES / "cnn.keras", tmp_path / "f16.keras"
    assert run("quantize", src, "--dtype", "float16", "-o", half).code == 0
    page = tmp_path / "p.html"
    args = ("diff", half, src, "--ignore-dtype", "--atol", "1e-2", "--html", page)
    res = run(*args)
    assert res.code == 0, res.out
    assert "EQUAL" in page.read_text() and "dtypes ignored" in page.read_text()
    default = tmp_path / "d.html"
    assert run("report", half, "--against", src, "-o", default).code == 0
    assert "dtype differs" in default.read_text()  # the premise: without them it differs


def test_report_command_writes_the_page(tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    res = run("report", SAMPLES / "cnn.keras", "-o", page, "-s", "logits*")
    assert res.code == 0, res.err
    html = page.read_text()
    assert html.count('class="hist"') == 2 and "logits/kernel" in html
    assert "conv/kernel" not in html
    as_json = run("report", SAMPLES / "cnn.keras", "-o", page, "--json").json()
    assert isinstance(as_json, dict)
    assert len(as_json["inspect"]["tensors"][0]["histogram"]["counts"]) == BINS
    # No address anywhere: nothing for a browser to fetch (the CSP forbids it too).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "default-src 'none'" in html


def test_names_from_the_file_are_escaped(tmp_path: Path) -> None:
    src = tmp_path / "hostile.h5"
    evil = '<img src=x onerror="alert(1)">'
    with h5py.File(src, "w") as f:
        f.create_dataset(f"{evil}/kernel:0", data=np.ones((3, 2), np.float32))
        f.attrs["weightcli_note"] = "</script><script>alert(2)</script>"
    page = tmp_path / "p.html"
    assert run("report", src, "-o", page).code == 0
    html = page.read_text()
    assert "<img" not in html and "onerror=" not in html.replace("onerror=&quot;", "")
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("scale", "{src}", "0.5", "--dry-run", "--report-html", "{page}"), "--dry-run"),
        (("scale", "{copy}", "0.5", "--in-place", "--report-html", "{page}"), "--in-place"),
        (
            (
                "scale",
                "{src}",
                "{src}",
                "0.5",
                "--output-dir",
                "{tmp}/o",
                "--report-html",
                "{page}",
            ),
            "one page",
        ),
        (
            ("scale", "{src}", "0.5", "-o", "{tmp}/o.keras", "--report-html", "{src}"),
            "one of the models",
        ),
        (("report", "{src}", "-o", "{src}"), "one of the models"),
        (("report", "{src}", "-o", "{tmp}"), "folder"),
        (("report", "{src}", "-o", "{page}", "--map", "a=b"), "--against"),
        (("report", "{tmp}/missing.h5", "-o", "{page}"), "missing.h5"),
        (("report", "{src}", "-o", "s3://bucket/p.html"), "local path"),
        (("diff", "{src}", "{src}", "--html", "{src}"), "one of the models"),
        (("diff", "{src}", "{src}", "--structure", "--html", "{page}"), "--structure"),
    ],
)
def test_refusals(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    src = SAMPLES / "cnn.keras"
    copy = tmp_path / "copy.keras"
    shutil.copy(src, copy)
    before = src.read_bytes()
    page = tmp_path / "page.html"
    fill = {"src": str(src), "copy": str(copy), "page": str(page), "tmp": str(tmp_path)}
    res = run(*[a.format(**fill) for a in args])
    assert res.code == 2, res.out
    assert says in res.err and "Traceback" not in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert not page.exists() and src.read_bytes() == before
    assert copy.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp"))


def test_every_writing_result_says_what_to_draw() -> None:
    """--report-html reaches every writing command: each result it can follow names
    the file written and its source."""
    import weightcli.results as results

    for name in (
        "TransformResult",
        "ByActivationResult",
        "TransplantResult",
        "FreezeResult",
        "StripResult",
        "MigrateResult",
        "LoraExtractResult",
        "ExportResult",
        "DiffResult",
    ):
        assert callable(getattr(getattr(results, name), "compared", None)), name


def test_flag_json() -> None:
    assert Flag("nan", "t", "x").to_json() == {"kind": "nan", "tensor": "t", "text": "x"}


@pytest.mark.parametrize(
    ("argv", "against"),
    [
        (["transplant", "{s}/mlp.keras", "{s}/mlp_keras3.h5", "-o", "{o}/t.h5"], True),
        (["merge", "{s}/mlp.keras", "{s}/mlp.keras", "-o", "{o}/m.keras"], True),
        (["export", "{s}/mlp.keras", "--to", "safetensors", "-o", "{o}/e.safetensors"], True),
        (["freeze", "{s}/mlp.keras", "-s", "dense_1", "-o", "{o}/f.keras"], True),
    ],
    ids=["transplant", "merge", "export", "freeze"],
)
def test_report_html_after_other_writing_commands(
    tmp_path: Path, argv: list[str], against: bool
) -> None:
    page = tmp_path / "page.html"
    args = [a.format(s=SAMPLES, o=tmp_path) for a in argv]
    res = run(*args, "--report-html", page)
    assert res.code == 0, res.err
    html = page.read_text()
    written = Path(args[args.index("-o") + 1])
    assert f"<h1>{written}</h1>" in html
    assert ('id="change"' in html) == against
