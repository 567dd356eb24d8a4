#!/usr/bin/env bash
# Build KenLM's command-line tools (lmplz, build_binary, query) from the PyPI sdist.
# The kenlm wheel only has the Python query module; lmplz needs Boost and a CMake build.
# Usage: install_kenlm.sh VERSION PREFIX      -> PREFIX/bin/{lmplz,build_binary,query}
set -euo pipefail
version=$1
prefix=$(mkdir -p "$2" && cd "$2" && pwd)
python=${PYTHON:-python3}

debs=(libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev
      zlib1g-dev libbz2-dev liblzma-dev cmake g++ make)
missing=()
for d in "${debs[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "KenLM needs these packages (Debian names): ${missing[*]}; install them, then rerun." >&2
    exit 1
  fi
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "[kenlm] installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "[kenlm] building lmplz/build_binary/query from the kenlm==$version sdist (about a minute)"
"$python" -m pip download -q --no-deps --no-binary kenlm -d "$work" "kenlm==$version"
tar xzf "$work/kenlm-$version.tar.gz" -C "$work"
src="$work/kenlm-$version"
cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DKENLM_MAX_ORDER=6 >/dev/null
make -C "$src/build" -j"$(nproc)" lmplz build_binary query >/dev/null
mkdir -p "$prefix/bin"
cp "$src/build/bin/lmplz" "$src/build/bin/build_binary" "$src/build/bin/query" "$prefix/bin/"
echo "[kenlm] installed into $prefix/bin"
