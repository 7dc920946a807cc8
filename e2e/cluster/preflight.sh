#!/usr/bin/env bash
# Before any long build: is everything the local stack needs here? Prints each missing thing with
# the command that fixes it and exits 1; prints one line and exits 0 when all is well.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
CACHE="${COMPTROLLER_CACHE:-$HOME/.cache/comptroller}"
problems=()

python="${PYTHON:-python3}"
pyversion="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"
if [[ -z "$pyversion" ]]; then
  problems+=("$python does not run: install Python 3.11 or later (Debian: apt-get install python3 python3-venv)")
elif [[ "$(printf '%s\n3.11\n' "$pyversion" | sort -V | head -n1)" != "3.11" ]]; then
  problems+=("Python $pyversion is too old: 3.11 or later is needed (make PYTHON=python3.11 ...)")
elif ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  problems+=("$python cannot create virtual environments: apt-get install python3-venv")
fi

if ! command -v go >/dev/null; then
  problems+=("no go: install Go 1.26 or later (https://go.dev/doc/install), then put it on PATH")
else
  have="$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null)"; have="${have#go}"
  if [[ "$(printf '%s\n1.26\n' "$have" | sort -V | head -n1)" != "1.26" ]]; then
    problems+=("go $have is too old: Go 1.26 or later is needed (GOTOOLCHAIN=local: no automatic download)")
  fi
fi

# A cold build needs about 5 GiB: the binaries, Go's module and build caches.
missing=0
for bin in "etcd-$ETCD_VERSION/etcd" "kubernetes-$KUBERNETES_VERSION/kube-apiserver" "kwok-$KWOK_VERSION/kwok" \
           "helm-$HELM_VERSION-k8s$KUBERNETES_VERSION/helm" "prometheus-$PROMETHEUS_VERSION/prometheus"; do
  [[ -x "$CACHE/bin/$bin" ]] || missing=$((missing + 1))
done
if (( missing > 0 )); then
  mkdir -p "$CACHE" 2>/dev/null
  free_kib="$(df -Pk "$CACHE" 2>/dev/null | awk 'NR==2 {print $4}')"
  if [[ -n "$free_kib" ]] && (( free_kib < 5 * 1024 * 1024 )); then
    problems+=("only $((free_kib / 1024)) MiB free under $CACHE; the first build needs about 5 GiB (set COMPTROLLER_CACHE to a roomier disk)")
  fi
  if [[ ! -w "$CACHE" ]]; then
    problems+=("$CACHE is not writable: set COMPTROLLER_CACHE to a directory you own")
  fi
fi

if (( ${#problems[@]} > 0 )); then
  echo "preflight: the local stack cannot be built here yet:" >&2
  printf '  - %s\n' "${problems[@]}" >&2
  exit 1
fi
if (( missing > 0 )); then
  echo "preflight: ok; $missing of 5 components to build (cold: about 20 minutes on 2 cores)"
else
  echo "preflight: ok; every component cached in $CACHE/bin"
fi
