#!/bin/bash
# A/B timing of whole commands, for deciding whether a change pays (make bench is the
# record; this is the quick check). Runs the commands in turn N times; before each run
# it removes /tmp/abo*, reads the files in $PRE (this machine evicts pages idle for a
# minute) and syncs. Prints, per command: median, best and first-quartile wall time, and
# median and best CPU time (user + system, children included).
#
#   PRE=data/dense_1gb.h5 benchmarks/ab.sh 10 \
#       "weightcli scale data/dense_1gb.h5 0.5 -o /tmp/abo.h5" \
#       "cp data/dense_1gb.h5 /tmp/abo.h5"
#
# Each command writes its output under /tmp/abo* (removed before every run).
set -u
N=$1
shift
raw=$(mktemp)
times=$(mktemp)
trap 'rm -f "$raw" "$times"' EXIT
for _ in $(seq "$N"); do
    k=0
    for c in "$@"; do
        k=$((k + 1))
        rm -rf /tmp/abo*
        [ -n "${PRE:-}" ] && cat $PRE >/dev/null
        sync
        /usr/bin/time -o "$times" -f "%e %U %S" bash -c "$c" >/dev/null 2>&1 || echo "command $k failed" >&2
        read -r e u s <"$times"
        echo "$k $e $u $s" >>"$raw"
    done
done
python3 - "$raw" <<'PY'
import collections, statistics as st, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    k, e, u, s = line.split()
    runs[int(k)].append((float(e), float(u) + float(s)))
for k in sorted(runs):
    wall = sorted(w for w, _ in runs[k]); cpu = [c for _, c in runs[k]]
    print(f"{k} wall med {st.median(wall):.3f} min {wall[0]:.3f} q1 {wall[len(wall) // 4]:.3f}"
          f" | cpu med {st.median(cpu):.3f} min {min(cpu):.3f}")
PY
