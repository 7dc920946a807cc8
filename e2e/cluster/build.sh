#!/usr/bin/env bash
# Builds the local control plane and Prometheus from Go modules into a cache outside the repo:
#   $COMPTROLLER_CACHE/bin/<component>-<version>/<binary>
# Idempotent: a component whose binaries already exist is not rebuilt.
# Prints one line per component; each one's full output goes to .cluster/logs/build-<name>.log,
# whose last lines are shown only if it fails.
# Usage: build.sh [all|kubernetes|etcd|kwok|helm|prometheus|actionlint|kyverno|gatekeeper]...
# `all` is the control plane and Prometheus; actionlint (the workflow linter `make lint` runs) and
# the benchmark peers kyverno and gatekeeper (`make bench`) are built only when named.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

CACHE="${COMPTROLLER_CACHE:-$HOME/.cache/comptroller}"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
mkdir -p "$CACHE/bin" "$CACHE/src"
LOGS="$repo/.cluster/logs"
mkdir -p "$LOGS"

exec 3>&2  # the terminal: what `say` prints; everything else goes to the component's log
log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
say() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&3; log "$*"; }

# A wrapper module per component, so each one's dependency graph stays its own.
new_module() {  # new_module DIR MODULE_PATH
  rm -rf "$1"; mkdir -p "$1"
  (cd "$1" && go mod init "$2" >/dev/null 2>&1)
}

build_kubernetes() {
  local v="$KUBERNETES_VERSION" out="$CACHE/bin/kubernetes-$KUBERNETES_VERSION"
  if [[ -x "$out/kubectl" && -x "$out/kube-apiserver" && -x "$out/kube-controller-manager" && -x "$out/kube-scheduler" ]]; then
    say "kubernetes $v: cached"; return
  fi
  local src="$CACHE/src/kubernetes-$v" staging_v="v0.${v#v1.}"
  log "kubernetes $v: preparing wrapper module (staging modules at $staging_v)"
  new_module "$src" comptroller.dev/localplane/kubernetes
  cd "$src"
  # k8s.io/kubernetes replaces its staging modules with ./staging paths; replace
  # directives do not carry over to a dependent module, so pin each one here.
  local modfile; modfile="$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  go mod edit -require="k8s.io/kubernetes@$v"
  grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$modfile" | awk '{print $1}' | while read -r m; do
    go mod edit -replace="$m=$m@$staging_v"
  done
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubectl/pkg/cmd"
)
GO
  log "kubernetes $v: resolving modules"
  go mod tidy -e >/dev/null 2>&1 || true
  local minor="${v#v1.}"; minor="${minor%%.*}"
  local date; date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  mkdir -p "$out.tmp"
  say "kubernetes $v: compiling kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (cold: about 15 minutes on 2 cores)"
  go build -v -ldflags "$ld" -o "$out.tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl 2>&1 \
    | tee /dev/stderr | awk '{n++} n%400==0 {printf "[build]   kubernetes: %d packages compiled\n", n; fflush()}' >&3
  rm -rf "$out"; mv "$out.tmp" "$out"
  log "kubernetes $v: done -> $out"
}

build_etcd() {
  local v="$ETCD_VERSION" out="$CACHE/bin/etcd-$ETCD_VERSION"
  if [[ -x "$out/etcd" ]]; then say "etcd $v: cached"; return; fi
  local src="$CACHE/src/etcd-$v"
  log "etcd $v: preparing wrapper module"
  new_module "$src" comptroller.dev/localplane/etcd
  cd "$src"
  cat > main.go <<'GO'
// etcd's own main, built from its server module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go mod edit -require="go.etcd.io/etcd/server/v3@$v"
  for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do go mod edit -require="go.etcd.io/etcd/$m@$v"; done
  go mod tidy >/dev/null
  say "etcd $v: compiling"
  mkdir -p "$out.tmp"
  go build -ldflags "-s -w" -o "$out.tmp/etcd" .
  rm -rf "$out"; mv "$out.tmp" "$out"
  log "etcd $v: done -> $out"
}

build_go_install() {  # build_go_install NAME VERSION PACKAGE BINARY [CACHE_KEY [LDFLAGS]]
  local name="$1" v="$2" pkg="$3" bin="$4" out="$CACHE/bin/$1-${5:-$2}"
  if [[ -x "$out/$bin" ]]; then say "$name $v: cached"; return; fi
  say "$name $v: compiling $pkg"
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  GOBIN="$out.tmp" go install -ldflags "-s -w ${6:-}" "$pkg@$v"
  rm -rf "$out"; mv "$out.tmp" "$out"
  log "$name $v: done -> $out"
}

build_kwok() { build_go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok kwok; }
# Prometheus 3.x publishes its Go module as v0.3XX.Y. Without the `builtinassets` tag the web UI
# is not embedded: the HTTP API, which is all the e2e suite and the demo query, works the same.
build_prometheus() {
  local minor="${PROMETHEUS_VERSION#v0.3}"  # v0.316.0 -> 16.0 -> 3.16.0
  build_go_install prometheus "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/prometheus prometheus \
    "$PROMETHEUS_VERSION" "-X github.com/prometheus/common/version.Version=3.${minor}"
}
build_helm() {
  # Without a cluster, helm assumes the Kubernetes version of its own client libraries' defaults
  # (v1.20), which charts' kubeVersion constraints refuse; default it to the plane's version.
  local minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}" ld=""
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ld+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  build_go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm helm "$HELM_VERSION-k8s$KUBERNETES_VERSION" "$ld"
}

# The GitHub Actions workflow linter, for `make lint`. It runs shellcheck and pyflakes on `run:`
# scripts only when they are on PATH, and skips those checks otherwise.
build_actionlint() {
  build_go_install actionlint "$ACTIONLINT_VERSION" github.com/rhysd/actionlint/cmd/actionlint actionlint
}

# ---- admission-controller peers, for bench/peers_bench.py (`make bench` only) ----------------
# Compiled at low priority: the machine's two cores are shared with whoever runs the tests.
peer_go() { nice -n 10 go "$@"; }

# Kyverno's admission controller (cmd/kyverno). Its go.mod has a replace directive
# (k8s.io/pod-security-admission => a Kyverno fork), so `go install module/cmd@version` is refused;
# that is tried first (its answer goes to the log), then a wrapper module requires Kyverno at the
# pinned version and repeats the upstream replace lines, which then apply.
build_kyverno() {
  local v="$KYVERNO_VERSION" out="$CACHE/bin/kyverno-$KYVERNO_VERSION"
  if [[ -x "$out/kyverno" ]]; then say "kyverno $v: cached"; return; fi
  local ld="-s -w -X github.com/kyverno/kyverno/pkg/version.BuildVersion=$v"
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  log "kyverno $v: trying go install github.com/kyverno/kyverno/cmd/kyverno@$v"
  if GOBIN="$out.tmp" peer_go install -ldflags "$ld" "github.com/kyverno/kyverno/cmd/kyverno@$v"; then
    rm -rf "$out"; mv "$out.tmp" "$out"; log "kyverno $v: done (go install) -> $out"; return
  fi
  local src="$CACHE/src/kyverno-$v"
  log "kyverno $v: go install refused; wrapper module with Kyverno's replace lines"
  new_module "$src" comptroller.dev/bench/kyverno
  cd "$src"
  local modfile; modfile="$(go mod download -json "github.com/kyverno/kyverno@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  go mod edit -require="github.com/kyverno/kyverno@$v"
  # Single-line replace directives (`replace a => b v`) and those inside a `replace ( ... )` block.
  awk '/^replace \(/ {b=1; next} b && /^\)/ {b=0; next} b {print; next} /^replace / {sub(/^replace /, ""); print}' "$modfile" \
    | while read -r old _ new newv; do
        [[ -n "$old" ]] || continue
        go mod edit -replace="$old=$new${newv:+@$newv}"
        log "kyverno $v: replace $old => $new $newv"
      done
  say "kyverno $v: resolving modules"
  peer_go get "github.com/kyverno/kyverno/cmd/kyverno@$v"
  say "kyverno $v: compiling cmd/kyverno (cold: 15-25 minutes on 2 shared cores)"
  peer_go build -ldflags "$ld" -o "$out.tmp/kyverno" github.com/kyverno/kyverno/cmd/kyverno
  rm -rf "$out"; mv "$out.tmp" "$out"
  log "kyverno $v: done -> $out"
}

# OPA Gatekeeper's manager (the module's root package); its go.mod has no replace directive.
build_gatekeeper() {
  local v="$GATEKEEPER_VERSION" out="$CACHE/bin/gatekeeper-$GATEKEEPER_VERSION"
  if [[ -x "$out/gatekeeper" ]]; then say "gatekeeper $v: cached"; return; fi
  say "gatekeeper $v: compiling github.com/open-policy-agent/gatekeeper/v3 (the manager)"
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  GOBIN="$out.tmp" peer_go install \
    -ldflags "-s -w -X github.com/open-policy-agent/gatekeeper/v3/pkg/version.Version=$v" \
    "github.com/open-policy-agent/gatekeeper/v3@$v"
  rm -rf "$out"; mv "$out.tmp" "$out"
  log "gatekeeper $v: done -> $out"
}

targets=("$@"); [[ ${#targets[@]} -eq 0 || "${targets[0]}" == all ]] && targets=(etcd kwok kubernetes helm prometheus)
start=$SECONDS
for t in "${targets[@]}"; do
  declare -F "build_$t" >/dev/null || { echo "build.sh: unknown component $t" >&2; exit 2; }
  log_file="$LOGS/build-$t.log"
  began=$SECONDS
  set +e
  (set -e; "build_$t") >"$log_file" 2>&1
  rc=$?
  set -e
  if [[ $rc -ne 0 ]]; then
    printf '[build] %s FAILED after %ds (exit %d); the last lines of %s:\n' "$t" $((SECONDS - began)) "$rc" "$log_file" >&2
    tail -n 30 "$log_file" | sed 's/^/    /' >&2
    exit "$rc"
  fi
  if (( SECONDS - began > 2 )); then
    printf '[build %s] %s: ready in %ds\n' "$(date +%H:%M:%S)" "$t" $((SECONDS - began)) >&2
  fi
done
# One component (`build.sh actionlint` in `make lint`) already said where it stands: one line is enough.
if (( ${#targets[@]} > 1 )); then
  printf '[build %s] all components ready in %ds (logs: .cluster/logs/build-*.log)\n' "$(date +%H:%M:%S)" \
    $((SECONDS - start)) >&2
fi
