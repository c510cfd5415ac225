"""The Python API, the command layout behind it, and the CLI as a thin client of it."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import ROOT, SAMPLES, run

import weightcli
from weightcli.errors import ParameterError, UsageError, WeightcliError
from weightcli.stores import open_store
from weightcli.stores.base import Block, PatcherStateError


def test_open_lists_and_reads_like_h5py() -> None:
    with weightcli.open(SAMPLES / "mlp_keras3.h5") as ckpt:
        names = [t.name for t in ckpt.tensors()]
        assert "dense_1/kernel" in names
        kernel = ckpt.array("dense_1/kernel")
        path = ckpt.store.tensor("dense_1/kernel").path
    with h5py.File(SAMPLES / "mlp_keras3.h5") as f:
        np.testing.assert_array_equal(kernel, f[path][()])


def test_unknown_name_names_the_nearest() -> None:
    with weightcli.open(SAMPLES / "mlp.keras") as ckpt, pytest.raises(UsageError) as err:
        ckpt.array("dense_1/kernal")
    assert "dense_1/kernel" in str(err.value)


def test_transform_diff_inspect_verify(tmp_path: Path) -> None:
    out = tmp_path / "half.keras"
    result = weightcli.scale(SAMPLES / "mlp.keras", 0.5, output=out, select=["dense_1"])
    assert result.exit_code == 0 and out.is_file()
    assert sorted(c.info.name for c in result.changes) == ["dense_1/bias", "dense_1/kernel"]
    with weightcli.open(SAMPLES / "mlp.keras") as a, weightcli.open(out) as b:
        np.testing.assert_array_equal(b.array("dense_1/kernel"), a.array("dense_1/kernel") * 0.5)
    d = weightcli.diff(SAMPLES / "mlp.keras", out)
    assert not d.equal and d.exit_code == 1
    assert {r.name for r in d.rows if r.status != "identical"} == {
        "dense_1/kernel",
        "dense_1/bias",
    }
    assert weightcli.diff(SAMPLES / "mlp.keras", SAMPLES / "mlp_keras3.h5").equal
    ins = weightcli.inspect(out, fail_on_nonfinite=True)
    assert ins.exit_code == 0 and ins.to_json()["history"][-1]["changed"] == [
        "dense_1/kernel",
        "dense_1/bias",
    ]
    ver = weightcli.verify(out, no_load=True)
    assert ver.exit_code == 0 and ver.to_json()["ok"] is True
    # The JSON the CLI prints is the result's own.
    cli = run("diff", SAMPLES / "mlp.keras", out, "--json").json()
    assert cli == {
        "path": str(SAMPLES / "mlp.keras"),
        **json.loads(json.dumps(d.to_json())),
        "exit_code": 1,
    }


def test_parameter_errors_name_parameters_not_flags(tmp_path: Path) -> None:
    with pytest.raises(ParameterError) as err:
        weightcli.clip(SAMPLES / "mlp.keras", abs_max=-1, output=tmp_path / "x.keras")
    assert "abs_max must be" in str(err.value) and "--" not in str(err.value)
    # The CLI spells the same parameter as its flag.
    res = run("clip", SAMPLES / "mlp.keras", "--abs-max", "-1", "-o", tmp_path / "x.keras")
    assert res.code == 2 and "--abs-max must be" in res.err
    # A recipe user is told the recipe's key, not a flag.
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[step]]\ncommand = "clip"\nabs_max = -1\n')
    res = run("apply", recipe, SAMPLES / "mlp.keras", "-o", tmp_path / "y.keras")
    assert res.code == 2 and "abs_max must be" in res.err and "--abs-max" not in res.err
    # A selection by layer class on a file without classes: the API's name, the CLI's flag.
    with pytest.raises(weightcli.errors.UsageError) as usage:
        weightcli.scale(
            SAMPLES / "mlp_tfkeras_weights.h5", 2, layer_types=["Dense"], output=tmp_path / "z.h5"
        )
    assert "layer_types needs layer classes" in str(usage.value) and "--" not in str(usage.value)
    res = run(
        "scale",
        SAMPLES / "mlp_tfkeras_weights.h5",
        "2",
        "--layer-type",
        "Dense",
        "-o",
        tmp_path / "z.h5",
    )
    assert res.code == 2 and "--layer-type needs layer classes" in res.err


def test_recipes_are_type_checked(tmp_path: Path) -> None:
    for body in ("bits = 8.5", 'bits = "8"', 'include_optimizer = "yes"'):
        recipe = tmp_path / "r.toml"
        recipe.write_text(f'[[step]]\ncommand = "quantize"\n{body}\n')
        res = run("apply", recipe, SAMPLES / "mlp.keras", "-o", tmp_path / "y.keras")
        assert res.code == 2 and "step 1" in res.err, body
        assert not (tmp_path / "y.keras").exists()


def test_factor_is_parsed_never_probed(tmp_path: Path, monkeypatch) -> None:
    """A file named like the factor does not change what the command means."""
    shutil.copyfile(SAMPLES / "mlp_keras3.h5", tmp_path / "m.h5")
    (tmp_path / "2").write_text("not a model")
    monkeypatch.chdir(tmp_path)
    res = run("scale", "m.h5", "2", "-o", "x.h5", "--json")
    assert res.code == 0, res.err
    assert res.json()["tensors"][0]["figures"][0]["factor"] == 2.0
    res = run("scale", "m.h5", "--factor", "0.5", "-o", "y.h5", "--json")
    assert res.code == 0 and res.json()["tensors"][0]["figures"][0]["factor"] == 0.5


def test_diff_over_directories(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "sub").mkdir(parents=True)
        shutil.copyfile(SAMPLES / "mlp.keras", root / "m.keras")
        shutil.copytree(SAMPLES / "mlp_export", root / "sub" / "export")
    shutil.copyfile(SAMPLES / "cnn.keras", a / "only_a.keras")
    assert run("diff", a, b, "--json").code == 1  # only_a.keras is missing in B
    (a / "only_a.keras").unlink()
    res = run("diff", a, b, "--json")
    assert res.code == 0, res.out
    lines = res.lines()
    assert lines[-1]["summary"]["models"] == 2 and lines[-1]["summary"]["ok"] == 2
    assert all(doc["equal"] for doc in lines[:-1])
    # One pair differs: exit 1, and that pair is the one reported as different.
    weightcli.scale(SAMPLES / "mlp.keras", 2, output=b / "m2.keras")
    shutil.move(b / "m2.keras", b / "m.keras")
    res = run("diff", a, b, "--json")
    assert res.code == 1
    docs = {Path(d["a"]).name: d for d in res.lines()[:-1]}
    assert docs["m.keras"]["equal"] is False and docs["export"]["equal"] is True


def test_patcher_refuses_calls_out_of_order(tmp_path: Path) -> None:
    with open_store(SAMPLES / "mlp_keras3.h5") as store:
        info = store.tensor("dense_1/kernel")
        patcher = store.patch(tmp_path / "o.h5")
        block = Block((0, 0), info.shape, 0)
        with pytest.raises(PatcherStateError):
            patcher.write(info, block, np.zeros(info.shape, "float32"))
        with pytest.raises(PatcherStateError):
            patcher.commit()  # no history yet
        patcher.abort()
        with pytest.raises(PatcherStateError):
            patcher.begin(info, info.dtype)
    assert not (tmp_path / "o.h5").exists() and list(tmp_path.iterdir()) == []


def test_bytes_written_is_what_was_written(tmp_path: Path) -> None:
    """A clip that changes one 1 MiB block of a 4 MiB tensor writes that block (and the
    history), not the tensor."""
    src = tmp_path / "big.h5"
    x = np.random.default_rng(0).uniform(-0.5, 0.5, size=(1024, 1024)).astype("float32")
    x[3, 3] = 7.0  # in the first block only
    with h5py.File(src, "w") as f:
        f["dense/kernel"] = x
    result = weightcli.clip(src, abs_max=1.0, output=tmp_path / "o.h5")
    block = 256 * 1024 * 4
    assert block <= result.bytes_written < block + 4096
    assert result.changes[0].changed == 1


def test_missing_tensorflow_is_one_line(tmp_path: Path) -> None:
    """Without the tf extra, a command that must run a model names the extra to install."""
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
        "from weightcli.cli import main; main(sys.argv[1:])\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, "verify", str(SAMPLES / "mlp.keras")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert (
        res.stderr.strip().splitlines() == [res.stderr.strip().splitlines()[0]]
        and "pip install 'weightcli[tf]'" in res.stderr
    )
    # Everything that runs no model still works.
    res = subprocess.run(
        [sys.executable, "-c", code, "verify", str(SAMPLES / "mlp.keras"), "--no-load"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr


def _imports(package: Path) -> dict[str, set[str]]:
    """Module -> the modules it imports (lazily or not), every edge: ``from pkg import
    sub`` is an edge to ``pkg.sub`` when that is a module, else to ``pkg`` itself (its
    ``__init__``), whichever package ``pkg`` is, the importer's own parent included."""
    mods = {
        ".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
    }
    graph: dict[str, set[str]] = {m: set() for m in mods}

    def known(t: str) -> str:
        while t and t not in mods:
            t = t.rsplit(".", 1)[0] if "." in t else ""
        return t

    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in mods else known(base)
                    for a in node.names
                ]
            graph[m] |= {t for t in targets if t and t != m}
    return graph


def _externals(module: str) -> set[str]:
    """Top-level names of the packages a module imports (lazily or not)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_layers_import_one_way() -> None:
    """No import cycle (lazy imports count); only cli/ imports click; stores import no
    command, result or report module; the library imports TensorFlow only in framework.py."""
    graph = _imports(ROOT / "weightcli")
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, "import cycle: " + " -> ".join([*stack, m, n])
            if not state.get(n):
                visit(n, [*stack, m])
        state[m] = 2

    for m in graph:
        if not state.get(m):
            visit(m, [])
    for m in graph:
        if not m.startswith("weightcli.cli"):
            assert "click" not in _externals(m), m
        if m != "weightcli.framework":
            assert not {"tensorflow", "keras", "tf_keras"} & _externals(m), m
    for m, deps in graph.items():
        if m.startswith("weightcli.stores"):
            bad = {d for d in deps if not d.startswith(("weightcli.stores", "weightcli.errors"))}
            assert bad <= {"weightcli.tensor", "weightcli.dtypes", "weightcli.version"}, (m, bad)


def test_every_error_is_a_weightcli_error_or_a_bug(tmp_path: Path) -> None:
    """User errors raised through the API are WeightcliErrors of the right kind, with exit
    code 2 and one line; they survive pickling (a worker's error, raised again here)."""
    import pickle

    from weightcli import errors

    cases = [
        (lambda: weightcli.inspect(tmp_path / "missing.h5"), errors.InputError),
        (lambda: weightcli.scale(SAMPLES / "mlp.keras", 2), errors.ParameterError),
        (lambda: weightcli.inspect(SAMPLES / "mlp.keras", select=["nothing*"]), errors.UsageError),
    ]
    for call, kind in cases:
        with pytest.raises(WeightcliError) as err:
            call()
        assert type(err.value) is kind or isinstance(err.value, kind), type(err.value)
        assert err.value.exit_code == 2 and "\n" not in str(err.value)
        again = pickle.loads(pickle.dumps(err.value))
        assert type(again) is type(err.value) and str(again) == str(err.value)


@pytest.mark.parametrize(
    "args",
    [
        ["scale", "{mlp}", "2"],
        ["clip", "{mlp}", "--abs-max", "1"],
        ["quantize", "{mlp}"],
        ["transplant", "{mlp}", "{mlp}"],
        ["merge", "{mlp}", "{mlp}"],
    ],
)
def test_note_is_kept_in_the_history(tmp_path: Path, args: list[str]) -> None:
    filled = [a.format(mlp=SAMPLES / "mlp_keras3.h5") for a in args]
    out = tmp_path / "o.h5"
    res = run(*filled, "--note", "ticket 42: calibration fix", "-o", out)
    assert res.code == 0, res.err
    doc = run("inspect", out, "--json", "--no-stats").json()
    assert doc["history"][-1]["note"] == "ticket 42: calibration fix"
    assert 'ticket 42: calibration fix"' in run("inspect", out, "--no-stats").out


def test_output_fields_a_command_cannot_honour_are_refused(tmp_path: Path) -> None:
    """One parameter group for every writing command (``OutputSpec``); a field that
    cannot apply is an error, in the request (API and CLI alike), never ignored."""
    from weightcli.commands.freeze import FreezeRequest
    from weightcli.params import OutputSpec

    with pytest.raises(ParameterError, match="allow_nonfinite does not apply to freeze"):
        FreezeRequest(layers=("dense_1",), out=OutputSpec(allow_nonfinite=True))


def test_every_writing_command_is_in_the_api_with_every_output_field(tmp_path: Path) -> None:
    """set, dump, reinit and freeze as functions; note and allow_nonfinite everywhere."""
    import numpy as np

    src = SAMPLES / "mlp.keras"
    res = weightcli.assign(src, {"dense_1/bias": 0.0}, output=tmp_path / "a.keras", note="why")
    assert res.exit_code == 0
    with weightcli.open(tmp_path / "a.keras") as ckpt:
        assert not ckpt.array("dense_1/bias").any()
        assert ckpt.meta.history[-1]["note"] == "why"
    dumped = weightcli.dump(tmp_path / "a.keras", tmp_path / "d.npz", select=["dense_1/*"])
    assert dumped.exit_code == 0
    assert set(np.load(tmp_path / "d.npz").files) == {"dense_1/kernel", "dense_1/bias"}
    re = weightcli.reinit(
        src, "zeros", select=["logits/kernel"], output=tmp_path / "r.keras", note="fresh head"
    )
    assert [c.info.name for c in re.changes] == ["logits/kernel"]
    fr = weightcli.freeze(src, ["dense_1"], output=tmp_path / "f.keras")
    assert fr.exit_code == 0
    tens = tmp_path / "tens.keras"
    weightcli.assign(src, {"dense_1/bias": 10.0}, output=tens)
    with pytest.raises(weightcli.errors.WeightcliError):  # 10 * 1e38 overflows float32
        weightcli.scale(tens, 1e38, output=tmp_path / "big.keras", select=["dense_1/bias"])
    big = weightcli.scale(
        tens, 1e38, output=tmp_path / "big.keras", select=["dense_1/bias"], allow_nonfinite=True
    )
    assert big.exit_code == 0 and (tmp_path / "big.keras").exists()


def test_the_api_spells_each_parameter_group_once(tmp_path: Path) -> None:
    """The API's keyword groups are the request groups' fields (no drift), and a
    misspelt keyword is an error, never ignored."""
    import dataclasses

    from weightcli import api
    from weightcli.params import OutputKeywords, OutputSpec
    from weightcli.select import Selection

    assert set(OutputKeywords.__annotations__) == {f.name for f in dataclasses.fields(OutputSpec)}
    selection_fields = {f.name for f in dataclasses.fields(Selection)} - {"floats_only"}
    assert set(api.WriteKeywords.__annotations__) - set(OutputKeywords.__annotations__) == (
        selection_fields
    )
    model = SAMPLES / "mlp.weights.h5"
    with pytest.raises(TypeError, match="'ouput'"):
        weightcli.scale(model, 2.0, ouput=tmp_path / "x.weights.h5")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'in_plac'"):
        weightcli.assign(model, {"x": 1.0}, in_plac=True)  # type: ignore[call-arg]
    assert not list(tmp_path.iterdir())
