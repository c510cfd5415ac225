"""`make bench`: weightcli against the tools users would otherwise run.

Every case: one warm-up run of each contender, then REPS rounds in which the
contenders run in rotating order, the case's input files read and `sync` before each
timed run (so every run starts with its inputs in the page cache, which this machine
empties of pages idle for a minute, and none pays for the previous one's disk
writeback), outputs removed before each run. Reported:
median wall time and median peak RSS of the whole process tree; each ratio is
computed pair by pair within a round, then its median taken. weightcli's warm-up run
also measures the peak PSS of its tree (untimed: reading it costs the kernel a walk of
the page tables), where a page the forked worker shares with its supervisor counts once.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from measure import Measurement, measure

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
OUT = HERE / "data" / "out"
BIN = Path(sys.executable).parent
W = str(BIN / "weightcli")
PY = sys.executable
REPS = int(os.environ.get("BENCH_REPS", "5"))


@dataclass
class Case:
    name: str
    contenders: dict[str, list[str]]
    outputs: list[Path] = field(default_factory=list)
    results: dict[str, list[Measurement]] = field(default_factory=dict)
    pss: dict[str, float] = field(default_factory=dict)  # MiB, weightcli's warm-up run
    reps: int = 0  # 0: REPS; start-up cases (tens of ms) take more rounds

    def clean(self) -> None:
        for p in self.outputs:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
            for extra in p.parent.glob(p.name + ".*"):
                extra.unlink()


def run_case(case: Case) -> None:
    for n, cmd in list(case.contenders.items()):
        if n != "weightcli" and shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
            print(
                f"  skipping {n}: {cmd[0]} is not installed (Debian: apt-get install hdf5-tools)",
                flush=True,
            )
            del case.contenders[n]
    names = list(case.contenders)
    for n in names:  # warm-up (weightcli's also measures its tree's PSS: untimed)
        case.clean()
        m = measure(case.contenders[n], with_pss=n == "weightcli")
        if m.peak_pss is not None:
            case.pss[n] = m.peak_pss / 2**20
    case.results = {n: [] for n in names}
    inputs = case_inputs(case)
    for r in range(case.reps or REPS):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            case.clean()
            warm(inputs)
            os.sync()
            case.results[n].append(measure(case.contenders[n]))
    case.clean()
    print(
        f"  {case.name}: " + ", ".join(f"{n} {med_wall(case, n):.3f} s" for n in names), flush=True
    )


def best_ratio(case: Case, a: str, b: str) -> float:
    """The ratio of the two contenders' best (shortest) times. This machine's noise only
    ever adds time, and some rounds slowed one contender alone (a copy 3x its usual
    time), so a ratio target counts as met only when this ratio meets it too."""
    return min(m.wall for m in case.results[a]) / min(m.wall for m in case.results[b])


def case_inputs(case: Case) -> list[Path]:
    """The benchmark files a case reads (the paths in weightcli's command line)."""
    found = []
    for arg in case.contenders.get("weightcli", []):
        p = Path(arg)
        if arg.startswith(str(DATA)) and not arg.startswith(str(OUT)) and p.exists():
            found += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return found


def warm(files: list[Path]) -> None:
    """Read ``files`` (untimed) so every contender starts with them in the page cache:
    this machine evicts pages idle for a minute (DAMON's pageout), and a contender that
    found its input evicted would measure the disk, not itself."""
    buf = bytearray(1 << 20)
    for f in files:
        with f.open("rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def med_wall(case: Case, n: str) -> float:
    return statistics.median(m.wall for m in case.results[n])


def med_rss(case: Case, n: str) -> float:
    return statistics.median(m.peak_rss for m in case.results[n]) / 2**20


def ratio(case: Case, a: str, b: str, what: str = "wall") -> float:
    xs = case.results[a]
    ys = case.results[b]
    if what == "wall":
        return statistics.median(x.wall / y.wall for x, y in zip(xs, ys, strict=True))
    return statistics.median(x.peak_rss / y.peak_rss for x, y in zip(xs, ys, strict=True))


def floor_note(by: dict[str, Case], label: str, op: str, copy: str) -> str:
    """The floor of this transform against the copy, where it was measured (the 1 GB
    .h5: one pass for scale and clip, whose floor is the same, two for quantize)."""
    if label != "1 GB .h5":
        return ""
    passes, case = (
        (FLOOR2, f"{op}, {label}")
        if op.startswith("quantize")
        else (FLOOR1, f"scale kernels x0.5, {label}")
    )
    c = by.get(case)
    if c is None or passes not in c.contenders or not c.results.get(passes):
        return ""
    return f"; {passes} (no hash) itself {ratio(c, passes, copy):.2f}x {copy}"


def with_digest(copy: list[str], source: Path) -> list[str]:
    """``copy`` and the source's sha256 at once, on the two cores: the floor of a
    weightcli transform, which must both write the copy and record the source's hash."""
    c = " ".join(f'"{a}"' for a in copy)
    digest = f'"{PY}" -m weightcli.digest sha256 "{source}" > /dev/null'
    return ["sh", "-c", f"{c} & {digest}; wait"]


# The floor of a transform in this stack (floor_transform.py): the source and the output
# mapped, the fused kernel over every block, no hash; a statistics pass first for two.
FLOOR1 = "floor: mapped, fused, 1 pass"
FLOOR2 = "floor: mapped, fused, 2 passes"
SAMPLES = ROOT / "sample_models"
# Issue 30: inspect --no-stats of every sample format within 60 ms of importing numpy, h5py.
START_FORMATS = {
    ".weights.h5": SAMPLES / "cnn.weights.h5",
    ".keras": SAMPLES / "cnn.keras",
    "legacy .h5": SAMPLES / "cnn_tfkeras.h5",
    "SavedModel": SAMPLES / "mlp_export",
}


def transform_cases(label: str, src: Path, suffix: str, copy: str) -> list[Case]:
    """scale / clip / quantize of one 1 GB model, against copying it (and the copy plus
    the source's sha256)."""
    o = OUT
    cp = ["cp", "-r"] if copy == "cp -r" else ["cp"]
    out = []
    for name, args, tag in (
        ("scale kernels x0.5", ["scale", str(src), "0.5", "--kind", "kernel"], "s"),
        ("clip --abs-max 0.01", ["clip", str(src), "--abs-max", "0.01"], "c"),
        ("quantize 8-bit per-channel", ["quantize", str(src)], "q"),
    ):
        w_out, c_out, d_out = (
            o / f"{tag}_w{suffix}",
            o / f"{tag}_cp{suffix}",
            o / f"{tag}_d{suffix}",
        )
        s_out = o / f"{tag}_sha{suffix}"
        contenders = {
            "weightcli": [W, *args, "-o", str(w_out)],  # the default digest: BLAKE3
            "weightcli --digest sha256": [W, *args, "-o", str(s_out), "--digest", "sha256"],
            copy: [*cp, str(src), str(c_out)],
            f"{copy} + sha256": with_digest([*cp, str(src), str(d_out)], src),
        }
        outputs = [w_out, s_out, c_out, d_out]
        if label == "1 GB .h5" and tag == "s":  # the user-space floors, measured once
            f_out, dd_out = o / "s_floor.h5", o / "s_dd.h5"
            dd2_out, m_out = o / "s_dd256.h5", o / "s_mapped.h5"
            contenders["dd bs=1M"] = ["dd", f"if={src}", f"of={dd_out}", "bs=1M", "status=none"]
            # dd's fastest block size here (64 KiB to 256 KiB: the buffer stays in cache)
            contenders["dd bs=256K"] = [
                "dd",
                f"if={src}",
                f"of={dd2_out}",
                "bs=256K",
                "status=none",
            ]
            contenders[FLOOR1] = [PY, str(HERE / "floor_transform.py"), str(src), str(m_out), "1"]
            outputs += [dd2_out, m_out]
            contenders["reused-buffer copy"] = [PY, str(HERE / "floor.py"), str(src), str(f_out)]
            contenders["sha256 of the source"] = [PY, "-m", "weightcli.digest", "sha256", str(src)]
            contenders["blake3 of the source"] = [PY, "-m", "weightcli.digest", "blake3", str(src)]
            outputs += [f_out, dd_out]
        if label == "1 GB .h5" and tag == "q":  # two passes: per-channel ranges, then the values
            m_out = o / "q_mapped.h5"
            contenders[FLOOR2] = [PY, str(HERE / "floor_transform.py"), str(src), str(m_out), "2"]
            outputs.append(m_out)
        out.append(Case(f"{name}, {label}", contenders, outputs))
    return out


def cases() -> list[Case]:
    r_h5, r_keras, r_sm = DATA / "resnet50.h5", DATA / "resnet50.keras", DATA / "resnet50_export"
    g1, g1b, huge = DATA / "dense_1gb.h5", DATA / "dense_1gb_b.h5", DATA / "huge_tensor.h5"
    g1c = DATA / "dense_1gb_c.h5"
    g1k, g1sm = DATA / "dense_1gb.keras", DATA / "dense_1gb_export"
    sample = ROOT / "sample_models" / "mlp_keras3.h5"
    o = OUT
    smcli = str(BIN / "saved_model_cli")
    return [
        Case(
            "start-up: --version",
            {"weightcli": [W, "--version"], "python -c pass": [PY, "-c", "pass"]},
            reps=21,
        ),
        Case(
            "start-up: inspect --no-stats, sample .h5",
            {
                "weightcli": [W, "inspect", str(sample), "--no-stats"],
                "import numpy, h5py": [PY, "-c", "import numpy, h5py"],
            },
            reps=21,
        ),
        *(
            Case(
                f"start-up: inspect --no-stats, sample {fmt}",
                {
                    "weightcli": [W, "inspect", str(path), "--no-stats"],
                    "import numpy, h5py": [PY, "-c", "import numpy, h5py"],
                },
                reps=11,
            )
            for fmt, path in START_FORMATS.items()
        ),
        Case(
            "inspect --no-stats, ResNet50 .h5",
            {
                "weightcli": [W, "inspect", str(r_h5), "--no-stats"],
                "h5ls -r": ["h5ls", "-r", str(r_h5)],
            },
        ),
        Case(
            "inspect, ResNet50 .h5",
            {"weightcli": [W, "inspect", str(r_h5)], "h5ls -r": ["h5ls", "-r", str(r_h5)]},
        ),
        Case(
            "report, ResNet50 .h5",
            {
                "weightcli": [W, "report", str(r_h5), "-o", str(o / "r50.html")],
                "inspect (statistics)": [W, "inspect", str(r_h5)],
            },
            [o / "r50.html"],
        ),
        Case(
            "inspect --no-stats, ResNet50 .keras",
            {"weightcli": [W, "inspect", str(r_keras), "--no-stats"]},
        ),
        Case(
            "inspect --no-stats, ResNet50 SavedModel",
            {
                "weightcli": [W, "inspect", str(r_sm), "--no-stats"],
                "saved_model_cli": [smcli, "show", "--all", "--dir", str(r_sm)],
            },
        ),
        Case(
            "inspect, ResNet50 SavedModel",
            {
                "weightcli": [W, "inspect", str(r_sm)],
                "saved_model_cli": [smcli, "show", "--all", "--dir", str(r_sm)],
            },
        ),
        Case(
            "scale kernels x0.5, ResNet50 .h5",
            {
                "weightcli": [
                    W,
                    "scale",
                    str(r_h5),
                    "0.5",
                    "--kind",
                    "kernel",
                    "-o",
                    str(o / "r_w.h5"),
                ],
                "cp": ["cp", str(r_h5), str(o / "r_cp.h5")],
                "tutorial": [PY, str(HERE / "tutorial_scale.py"), str(r_h5), str(o / "r_t.h5")],
            },
            [o / "r_w.h5", o / "r_cp.h5", o / "r_t.h5"],
        ),
        Case(
            "scale kernels x0.5, ResNet50 SavedModel",
            {
                "weightcli": [
                    W,
                    "scale",
                    str(r_sm),
                    "0.5",
                    "--kind",
                    "kernel",
                    "-o",
                    str(o / "r_sm_w"),
                ],
                "cp -r": ["cp", "-r", str(r_sm), str(o / "r_sm_cp")],
                "import numpy": [PY, "-c", "import numpy"],
            },
            [o / "r_sm_w", o / "r_sm_cp"],
        ),
        Case(
            "verify --no-load, ResNet50 SavedModel",
            {
                "weightcli": [W, "verify", str(r_sm), "--no-load"],
                "tf.train.load_checkpoint loop": [
                    PY,
                    str(HERE / "tf_checkpoint_loop.py"),
                    str(r_sm / "variables" / "variables"),
                ],
            },
        ),
        Case(
            "inspect --no-stats, 1 GB .h5",
            {
                "weightcli": [W, "inspect", str(g1), "--no-stats"],
                "h5ls -r": ["h5ls", "-r", str(g1)],
            },
        ),
        Case(
            "inspect, 1 GB .h5",
            {"weightcli": [W, "inspect", str(g1)], "cp": ["cp", str(g1), str(o / "g_cp.h5")]},
            [o / "g_cp.h5"],
        ),
        *transform_cases("1 GB .h5", g1, ".h5", "cp"),
        *transform_cases("1 GB .keras", g1k, ".keras", "cp"),
        *transform_cases("1 GB SavedModel", g1sm, "", "cp -r"),
        Case(
            "prune 50%, 1 GB .h5",
            {
                "weightcli": [W, "prune", str(g1), "--sparsity", "0.5", "-o", str(o / "g_p.h5")],
                "cp": ["cp", str(g1), str(o / "g_p_cp.h5")],
                FLOOR2: [PY, str(HERE / "floor_transform.py"), str(g1), str(o / "g_p_m.h5"), "2"],
            },
            [o / "g_p.h5", o / "g_p_cp.h5", o / "g_p_m.h5"],
        ),
        Case(
            "diff two 1 GB .h5",
            {
                "weightcli": [W, "diff", str(g1), str(g1b), "--atol", "1e-6"],
                "cat A B": ["sh", "-c", f'cat "{g1}" "{g1b}" > /dev/null'],
                "h5diff -d 1e-6": ["h5diff", "-d", "1e-6", str(g1), str(g1b)],
            },
        ),
        Case(
            "merge (mean) of three 1 GB .h5",
            {
                "weightcli": [W, "merge", str(g1), str(g1b), str(g1c), "-o", str(o / "g_m.h5")],
                # Reading the three inputs once, then writing one: the floor of a merge.
                "cat 3 + cp 1": [
                    "sh",
                    "-c",
                    f'cat "{g1}" "{g1b}" "{g1c}" > /dev/null && cp "{g1}" "{o / "g_mcp.h5"}"',
                ],
            },
            [o / "g_m.h5", o / "g_mcp.h5"],
        ),
        Case(
            "merge --method dare-ties, base and two 1 GB .h5",
            {
                "weightcli": [
                    W,
                    "merge",
                    str(g1b),
                    str(g1c),
                    "--method",
                    "dare-ties",
                    "--base",
                    str(g1),
                    "--density",
                    "0.5",
                    "-o",
                    str(o / "g_dare.h5"),
                ],
                "cat 3 + cp 1": [
                    "sh",
                    "-c",
                    f'cat "{g1}" "{g1b}" "{g1c}" > /dev/null && cp "{g1}" "{o / "g_darecp.h5"}"',
                ],
            },
            [o / "g_dare.h5", o / "g_darecp.h5"],
        ),
        Case(
            "inspect --no-stats, 1.6 GB tensor",
            {"weightcli": [W, "inspect", str(huge), "--no-stats"]},
        ),
        Case("inspect, 1.6 GB tensor", {"weightcli": [W, "inspect", str(huge)]}),
        Case(
            "report, 1.6 GB tensor",
            {"weightcli": [W, "report", str(huge), "-o", str(o / "huge.html")]},
            [o / "huge.html"],
        ),
        Case(
            "scale, 1.6 GB tensor",
            {"weightcli": [W, "scale", str(huge), "0.5", "-o", str(o / "h_s.h5")]},
            [o / "h_s.h5"],
        ),
        Case(
            "clip --percentile 99.9, 1.6 GB tensor",
            {"weightcli": [W, "clip", str(huge), "--percentile", "99.9", "-o", str(o / "h_c.h5")]},
            [o / "h_c.h5"],
        ),
        Case(
            "quantize per-channel, 1.6 GB tensor",
            {"weightcli": [W, "quantize", str(huge), "-o", str(o / "h_q.h5")]},
            [o / "h_q.h5"],
        ),
        Case("diff, 1.6 GB tensor with itself", {"weightcli": [W, "diff", str(huge), str(huge)]}),
        Case(
            "verify --no-load, 1.6 GB tensor", {"weightcli": [W, "verify", str(huge), "--no-load"]}
        ),
    ]


def versions() -> str:
    def ver(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not found"

    import h5py
    import numpy

    tf_version = ver(
        [
            PY,
            "-c",
            "import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'; import tensorflow as t, keras as k; print(t.__version__, k.__version__)",
        ]
    )
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        ),
        "?",
    )
    return "\n".join(
        [
            f"- machine: {os.cpu_count()} cores ({cpu}), {mem} memory, {platform.system()} {platform.release()}",
            f"- filesystem of benchmarks/data: {ver(['stat', '-f', '-c', '%T', str(DATA)])}",
            f"- Python {platform.python_version()}, numpy {numpy.__version__}, h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version})",
            f"- TensorFlow / Keras: {tf_version}",
            f"- weightcli {ver([W, '--version'])}; {ver(['h5diff', '--version'])}; cp: {ver(['cp', '--version'])}",
            f"- repetitions per contender: {REPS} (after one warm-up), medians",
        ]
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    # Bytecode for weightcli's modules, as an installed package has (an editable
    # install under PYTHONDONTWRITEBYTECODE would otherwise compile them every run).
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "weightcli")], check=True)
    selected = sys.argv[1:]
    all_cases = [c for c in cases() if not selected or any(s in c.name for s in selected)]
    for c in all_cases:
        print(f"running: {c.name}", flush=True)
        run_case(c)
    if selected:  # a partial run: printed above, RESULTS.md (the whole run) left as it is
        return
    write_results(all_cases)


def sizes() -> list[str]:
    """File sizes after pruning the 1 GB .h5 (50%, 2:4), with and without --compress
    (measured once: sizes, not times)."""
    src = DATA / "dense_1gb.h5"
    if not src.exists():
        return []
    rows = [
        "",
        "## File sizes after pruning (1 GB float32 .h5)",
        "",
        "| run | size | of the source |",
        "|---|---:|---:|",
    ]
    base = src.stat().st_size
    for label, args in (
        ("prune --sparsity 0.5", ["--sparsity", "0.5"]),
        ("prune --sparsity 0.5 --compress", ["--sparsity", "0.5", "--compress"]),
        ("prune --pattern 2:4", ["--pattern", "2:4"]),
        ("prune --pattern 2:4 --compress", ["--pattern", "2:4", "--compress"]),
    ):
        out = OUT / "size.h5"
        out.unlink(missing_ok=True)
        subprocess.run(
            [W, "prune", str(src), *args, "-o", str(out)], check=True, capture_output=True
        )
        size = out.stat().st_size
        rows.append(f"| {label} | {size / 2**20:.0f} MiB | {100 * size / base:.0f}% |")
        out.unlink()
    return rows


def write_results(done: list[Case]) -> None:
    by = {c.name: c for c in done}
    lines = [
        "# Benchmark results",
        "",
        "Generated by `make bench` (benchmarks/run.py). "
        + (__doc__ or "").split("\n\n")[1].replace("\n", " "),
        "",
        versions(),
        "",
    ]
    lines += [
        "## Every case",
        "",
        "| case | contender | median wall (s) | median peak RSS (MiB) | peak PSS (MiB) | ratio to weightcli's (wall, pairwise median) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for c in done:
        for n in c.contenders:
            r = "" if n == "weightcli" else f"{ratio(c, 'weightcli', n):.3f}x"
            p = f"{c.pss[n]:.1f}" if n in c.pss else ""
            lines.append(
                f"| {c.name} | {n} | {med_wall(c, n):.3f} | {med_rss(c, n):.1f} | {p} | {r} |"
            )
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]

    def target(name: str, text: str, ok: bool, measured: str) -> None:
        lines.append(f"| {text} | {measured} | {'yes' if ok else '**no**'} |")

    def within_sum(
        what: str, t: float, start: tuple[str, float], floor: tuple[float, str, float]
    ) -> None:
        """Issue 30's form: ``t`` within a start-up plus a multiple of a floor."""
        (imp_name, imp), (k, floor_name, f) = start, floor
        target(
            "",
            f"{what} within `{imp_name}` + {k:g}x `{floor_name}`",
            t <= imp + k * f,
            f"{t:.3f} s against {imp:.3f} + {k:g} x {f:.3f} = {imp + k * f:.3f} s",
        )

    def have(*names: str) -> bool:
        return all(n in by and len(by[n].contenders) > 1 for n in names)

    # Issue 20: transforms of 1 GB at the speed of copying it.
    for label, copy in (("1 GB .h5", "cp"), ("1 GB .keras", "cp"), ("1 GB SavedModel", "cp -r")):
        for op, limit in (
            ("scale kernels x0.5", 1.3),
            ("clip --abs-max 0.01", 1.3),
            ("quantize 8-bit per-channel", 2.0),
        ):
            n = f"{op}, {label}"
            if not have(n):
                continue
            x = ratio(by[n], "weightcli", copy)
            best = best_ratio(by[n], "weightcli", copy)
            floor = ratio(by[n], "weightcli --digest sha256", f"{copy} + sha256")
            extra = ""
            if "dd bs=1M" in by[n].contenders:
                extra = (
                    f"; {ratio(by[n], 'weightcli', 'dd bs=1M'):.2f}x dd, "
                    f"{ratio(by[n], 'weightcli', 'reused-buffer copy'):.2f}x the reused-buffer copy; "
                    f"dd bs=256K itself {ratio(by[n], 'dd bs=256K', copy):.2f}x {copy}"
                )
            extra += floor_note(by, label, op, copy)
            target(
                n,
                f"{op.split(' ')[0]} of {label} at most {limit}x {copy}",
                x <= limit and best <= limit,
                f"{x:.2f}x {copy}, best times {best:.2f}x (with --digest sha256: "
                f"{floor:.2f}x {copy} + sha256{extra})",
            )
    if have("diff two 1 GB .h5"):
        x = ratio(by["diff two 1 GB .h5"], "weightcli", "cat A B")
        target("", "diff of two 1 GB files at most 1.5x `cat A B`", x <= 1.5, f"{x:.2f}x")
        start = "start-up: inspect --no-stats, sample .h5"
        if have(start):  # issue 30's form: Python's start-up with numpy and h5py allowed
            c = by["diff two 1 GB .h5"]
            within_sum(
                "diff of two 1 GB files",
                med_wall(c, "weightcli"),
                ("import numpy, h5py", med_wall(by[start], "import numpy, h5py")),
                (1.5, "cat A B", med_wall(c, "cat A B")),
            )
    for n, base in (
        ("start-up: --version", "python -c pass"),
        ("start-up: inspect --no-stats, sample .h5", "import numpy, h5py"),
        *(
            (f"start-up: inspect --no-stats, sample {fmt}", "import numpy, h5py")
            for fmt in START_FORMATS
        ),
    ):
        if have(n):
            extra_ms = 1000 * (med_wall(by[n], "weightcli") - med_wall(by[n], base))
            target("", f"{n}: within 60 ms of `{base}`", extra_ms <= 60, f"+{extra_ms:.0f} ms")
    if "scale kernels x0.5, ResNet50 SavedModel" in by:
        c = by["scale kernels x0.5, ResNet50 SavedModel"]
        t = med_wall(c, "weightcli")
        target("", "scale of the ResNet50 SavedModel under 0.3 s", t < 0.3, f"{t:.3f} s")
        if "import numpy" in c.contenders:  # issue 30's form
            within_sum(
                "scale of the ResNet50 SavedModel",
                t,
                ("import numpy", med_wall(c, "import numpy")),
                (3.0, "cp -r", med_wall(c, "cp -r")),
            )
    if have("scale kernels x0.5, ResNet50 .h5"):
        c = by["scale kernels x0.5, ResNet50 .h5"]
        s = 1 / ratio(c, "weightcli", "tutorial")
        m = 1 / ratio(c, "weightcli", "tutorial", "rss")
        target(
            "",
            "ResNet50 .h5 scale at least 12x faster than the tutorial route",
            s >= 12,
            f"{s:.1f}x faster",
        )
        target(
            "",
            "ResNet50 .h5 scale at least 10x less peak memory than the tutorial route",
            m >= 10,
            f"{m:.1f}x less",
        )
    if have("inspect --no-stats, ResNet50 SavedModel", "inspect, ResNet50 SavedModel"):
        for n in ("inspect --no-stats, ResNet50 SavedModel", "inspect, ResNet50 SavedModel"):
            x = ratio(by[n], "weightcli", "saved_model_cli")
            mem = ratio(by[n], "weightcli", "saved_model_cli", "rss")
            target(
                "",
                f"SavedModel `{n.split(',')[0]}` at most 1/5 of saved_model_cli's wall time",
                x <= 0.2,
                f"{x:.3f}x",
            )
            target(
                "",
                f"SavedModel `{n.split(',')[0]}` at most 1/4 of saved_model_cli's peak memory",
                mem <= 0.25,
                f"{mem:.3f}x",
            )
    if have("scale kernels x0.5, ResNet50 SavedModel"):
        x = ratio(by["scale kernels x0.5, ResNet50 SavedModel"], "weightcli", "cp -r")
        target(
            "",
            "ResNet50 SavedModel scale within 1.5x of copying the directory",
            x <= 1.5,
            f"{x:.2f}x cp -r",
        )
    if have("diff two 1 GB .h5") and "h5diff -d 1e-6" in by["diff two 1 GB .h5"].contenders:
        x = ratio(by["diff two 1 GB .h5"], "weightcli", "h5diff -d 1e-6")
        target("", "diff of two 1 GB files no slower than h5diff -d", x <= 1.0, f"{x:.2f}x h5diff")
    if have("inspect, 1 GB .h5"):
        x = ratio(by["inspect, 1 GB .h5"], "weightcli", "cp")
        target("", "inspect with statistics of a 1 GB .h5 within 2x cp", x <= 2.0, f"{x:.2f}x cp")
    if have("merge (mean) of three 1 GB .h5"):
        c = by["merge (mean) of three 1 GB .h5"]
        x = ratio(c, "weightcli", "cat 3 + cp 1")
        target(
            "",
            "merge of three 1 GB .h5 within 2x reading them once plus cp, under 300 MiB",
            x <= 2.0 and med_rss(c, "weightcli") < 300,
            f"{x:.2f}x, {med_rss(c, 'weightcli'):.0f} MiB",
        )
    dare = "merge --method dare-ties, base and two 1 GB .h5"
    if have(dare):
        x = ratio(by[dare], "weightcli", "cat 3 + cp 1")
        target(
            "",
            "merge --method dare-ties of three 1 GB .h5 within 3x reading them once plus cp",
            x <= 3.0,
            f"{x:.2f}x, {med_rss(by[dare], 'weightcli'):.0f} MiB",
        )
    if have("report, ResNet50 .h5"):
        x = ratio(by["report, ResNet50 .h5"], "weightcli", "inspect (statistics)")
        page = OUT / "r50_size.html"
        subprocess.run([W, "report", str(DATA / "resnet50.h5"), "-o", str(page)], check=True)
        size = page.stat().st_size
        page.unlink()
        target(
            "",
            "report page of ResNet50 under 3 MB, written within 2x inspect with statistics",
            x <= 2.0 and size < 3_000_000,
            f"{x:.2f}x inspect, {size / 1e6:.2f} MB",
        )
    if have("prune 50%, 1 GB .h5"):
        c = by["prune 50%, 1 GB .h5"]
        x, best = ratio(c, "weightcli", "cp"), best_ratio(c, "weightcli", "cp")
        note = ""
        if FLOOR2 in c.contenders:
            note = f"; {FLOOR2} (no hash) itself {ratio(c, FLOOR2, 'cp'):.2f}x cp"
        target(
            "",
            "prune of the 1 GB .h5 within 2x cp",
            x <= 2.0 and best <= 2.0,
            f"{x:.2f}x cp, best times {best:.2f}x{note}",
        )
    lines += sizes()
    nostats = [c for c in done if "--no-stats" in c.name]
    if nostats:
        worst = max(med_wall(c, "weightcli") for c in nostats)
        target(
            "", "inspect --no-stats under 0.5 s on every case", worst < 0.5, f"worst {worst:.3f} s"
        )
    worst_mem = max(med_rss(c, "weightcli") for c in done)
    worst_case = max(done, key=lambda c: med_rss(c, "weightcli")).name
    target(
        "",
        "peak memory of every weightcli command under 100 MiB (the tree's RSS summed: "
        "pages the forked worker shares with its supervisor counted twice)",
        worst_mem < 100,
        f"worst {worst_mem:.0f} MiB ({worst_case})",
    )
    with_pss = [c for c in done if "weightcli" in c.pss]
    if with_pss:
        worst = max(with_pss, key=lambda c: c.pss["weightcli"])
        target(
            "",
            "peak memory of every weightcli command under 100 MiB (the tree's PSS: every "
            "page counted once, shared ones split between their processes)",
            worst.pss["weightcli"] < 100,
            f"worst {worst.pss['weightcli']:.0f} MiB ({worst.name})",
        )
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
