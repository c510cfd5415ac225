"""`make bench`: weightcli against the tools users would otherwise run.

Every case: one warm-up run of each contender, then REPS rounds in which the
contenders run in rotating order, `sync` before each timed run (so no run pays for
the previous one's disk writeback), outputs removed before each run. Reported:
median wall time and median peak RSS of the whole process tree; each ratio is
computed pair by pair within a round, then its median taken.
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
    for n in names:  # warm-up
        case.clean()
        measure(case.contenders[n])
    case.results = {n: [] for n in names}
    for r in range(REPS):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            case.clean()
            os.sync()
            case.results[n].append(measure(case.contenders[n]))
    case.clean()
    print(
        f"  {case.name}: " + ", ".join(f"{n} {med_wall(case, n):.3f} s" for n in names), flush=True
    )


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


def cases() -> list[Case]:
    r_h5, r_keras, r_sm = DATA / "resnet50.h5", DATA / "resnet50.keras", DATA / "resnet50_export"
    g1, g1b, huge = DATA / "dense_1gb.h5", DATA / "dense_1gb_b.h5", DATA / "huge_tensor.h5"
    g1c = DATA / "dense_1gb_c.h5"
    o = OUT
    smcli = str(BIN / "saved_model_cli")
    return [
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
        Case(
            "scale kernels x0.5, 1 GB .h5",
            {
                "weightcli": [
                    W,
                    "scale",
                    str(g1),
                    "0.5",
                    "--kind",
                    "kernel",
                    "-o",
                    str(o / "g_s.h5"),
                ],
                "cp": ["cp", str(g1), str(o / "g_cp.h5")],
                "read+write floor": [PY, str(HERE / "floor.py"), str(g1), str(o / "g_f.h5")],
                # The provenance record's sha256 of the source: work every transform does.
                "sha256 of the source": [PY, "-m", "weightcli.digest", str(g1)],
            },
            [o / "g_s.h5", o / "g_cp.h5", o / "g_f.h5"],
        ),
        Case(
            "clip --abs-max 0.01, 1 GB .h5",
            {
                "weightcli": [W, "clip", str(g1), "--abs-max", "0.01", "-o", str(o / "g_c.h5")],
                "cp": ["cp", str(g1), str(o / "g_cp.h5")],
            },
            [o / "g_c.h5", o / "g_cp.h5"],
        ),
        Case(
            "quantize 8-bit per-channel, 1 GB .h5",
            {
                "weightcli": [W, "quantize", str(g1), "-o", str(o / "g_q.h5")],
                "cp": ["cp", str(g1), str(o / "g_cp.h5")],
            },
            [o / "g_q.h5", o / "g_cp.h5"],
        ),
        Case(
            "diff two 1 GB .h5 (atol 1e-6)",
            {
                "weightcli": [W, "diff", str(g1), str(g1b), "--atol", "1e-6"],
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
            "inspect --no-stats, 1.6 GB tensor",
            {"weightcli": [W, "inspect", str(huge), "--no-stats"]},
        ),
        Case("inspect, 1.6 GB tensor", {"weightcli": [W, "inspect", str(huge)]}),
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
        "| case | contender | median wall (s) | median peak RSS (MiB) | ratio to weightcli's (wall, pairwise median) |",
        "|---|---|---:|---:|---:|",
    ]
    for c in done:
        for n in c.contenders:
            r = "" if n == "weightcli" else f"{ratio(c, 'weightcli', n):.3f}x"
            lines.append(f"| {c.name} | {n} | {med_wall(c, n):.3f} | {med_rss(c, n):.1f} | {r} |")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]

    def target(name: str, text: str, ok: bool, measured: str) -> None:
        lines.append(f"| {text} | {measured} | {'yes' if ok else '**no**'} |")

    def have(*names: str) -> bool:
        return all(n in by and len(by[n].contenders) > 1 for n in names)

    if have("scale kernels x0.5, 1 GB .h5", "clip --abs-max 0.01, 1 GB .h5"):
        for n in ("scale kernels x0.5, 1 GB .h5", "clip --abs-max 0.01, 1 GB .h5"):
            x = ratio(by[n], "weightcli", "cp")
            target(n, f"{n.split(',')[0]} on 1 GB .h5 at most 1.3x cp", x <= 1.3, f"{x:.2f}x cp")
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
    if have("diff two 1 GB .h5 (atol 1e-6)"):
        x = ratio(by["diff two 1 GB .h5 (atol 1e-6)"], "weightcli", "h5diff -d 1e-6")
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
        "peak memory of every weightcli command under 300 MiB",
        worst_mem < 300,
        f"worst {worst_mem:.0f} MiB ({worst_case})",
    )
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
