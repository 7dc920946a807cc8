#!/usr/bin/env bash
# Builds the project's Dockerfile without a container daemon (buildah, chroot isolation) into an OCI
# archive: dist/comptroller-<version>.oci.tar (version from pyproject.toml).
#
# The registry's python base cannot be assumed reachable, so the base is made here from Debian
# packages with mmdebstrap (bookworm minbase + Python 3.11, venv, pip, `python`, CA certificates)
# and passed as the Dockerfile's PYTHON_IMAGE build argument. The base is cached under
#   $COMPTROLLER_CACHE/image/base-<key>.tar      (key: hash of everything that goes into it)
# and buildah's storage lives in $COMPTROLLER_CACHE/image/storage, so a warm machine rebuilds
# neither the base nor the unchanged Dockerfile layers. PYTHON_IMAGE=python:3.11-slim (or any
# image buildah can pull) skips the local base and builds on that one instead.
#
# Missing tools (buildah, mmdebstrap; umoci, crun and skopeo to unpack, run and push the result)
# are installed with apt-get when running as root; otherwise the command to run is printed.
# One progress line per step with elapsed seconds; the full output goes to
# .cluster/logs/image-<timestamp>.log, whose tail is shown if a step fails.
# Usage: build.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
CACHE="${COMPTROLLER_CACHE:-$HOME/.cache/comptroller}"
IMAGE_CACHE="$CACHE/image"
STORAGE="$IMAGE_CACHE/storage"
RUNROOT="$IMAGE_CACHE/run"
LOGS="$repo/.cluster/logs"
mkdir -p "$IMAGE_CACHE" "$LOGS" "$repo/dist"
LOG="$LOGS/image-$(date +%Y%m%d-%H%M%S).log"
# Keep the last ten build logs.
find "$LOGS" -maxdepth 1 -name 'image-*.log' -printf '%T@ %p\n' | sort -rn | tail -n +10 | cut -d' ' -f2- \
  | xargs -r rm -f
: >"$LOG"

version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/pyproject.toml" | head -n1)"
[[ -n "$version" ]] || { echo "[image] no version in pyproject.toml" >&2; exit 1; }
out="$repo/dist/comptroller-$version.oci.tar"
image="localhost/comptroller:$version"

start=$SECONDS
exec 3>&2  # the terminal; commands' output goes to the log
say() { printf '[image %4ds] %s\n' "$((SECONDS - start))" "$*" >&3; printf '\n[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >>"$LOG"; }
fail() {
  printf '[image %4ds] FAILED: %s; last lines of %s:\n' "$((SECONDS - start))" "$*" "${LOG#"$repo"/}" >&3
  tail -n 40 "$LOG" | sed 's/^/    /' >&3
  exit 1
}
run() { "$@" >>"$LOG" 2>&1 || fail "$*"; }  # run CMD...: output to the log, tail on failure

buildah() { command buildah --root "$STORAGE" --runroot "$RUNROOT" --storage-driver "${STORAGE_DRIVER:-overlay}" "$@"; }

# 1. Tools, from Debian packages.
declare -A pkg_of=([buildah]=buildah [mmdebstrap]=mmdebstrap [umoci]=umoci [crun]=crun [skopeo]=skopeo)
missing=()
for tool in buildah mmdebstrap umoci crun skopeo; do
  type -P "$tool" >/dev/null || missing+=("${pkg_of[$tool]}")
done
if (( ${#missing[@]} == 0 )); then
  say "tools: buildah, mmdebstrap, umoci, crun, skopeo present"
elif (( EUID == 0 )); then
  say "tools: installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  run apt-get update
  run apt-get install -y --no-install-recommends "${missing[@]}"
else
  echo "[image] missing tools: ${missing[*]}. Install them as root, then run make image again:" >&2
  echo "    sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

# 2. The base image: a registry one given as PYTHON_IMAGE, or a local one from Debian packages.
BASE_SUITE=bookworm
BASE_PACKAGES="python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
BASE_MIRRORS=(
  "deb ${DEBIAN_MIRROR:-http://deb.debian.org/debian} $BASE_SUITE main"
  "deb ${DEBIAN_MIRROR:-http://deb.debian.org/debian} $BASE_SUITE-updates main"
  "deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} $BASE_SUITE-security main"
)
# Documentation, manuals and translations stay out (copyright files stay in).
# merged /usr set up by mmdebstrap's hook, not by the usrmerge package (which would pull in perl).
BASE_HOOKS=/usr/share/mmdebstrap/hooks/merged-usr
BASE_DPKG_OPTS=(
  "path-exclude=/usr/share/doc/*" "path-include=/usr/share/doc/*/copyright"
  "path-exclude=/usr/share/man/*" "path-exclude=/usr/share/info/*"
  "path-exclude=/usr/share/locale/*" "path-exclude=/usr/share/lintian/*"
)
if [[ -n "${PYTHON_IMAGE:-}" ]]; then
  base="$PYTHON_IMAGE"
  say "base: $base (PYTHON_IMAGE, pulled by buildah if needed)"
else
  key="$( { echo "rev=1 suite=$BASE_SUITE variant=minbase packages=$BASE_PACKAGES hooks=$BASE_HOOKS"
            printf '%s\n' "${BASE_MIRRORS[@]}" "${BASE_DPKG_OPTS[@]}"
            dpkg-query -W -f='${Version}\n' mmdebstrap; } | sha256sum | cut -c1-16)"
  base="localhost/comptroller-base:$key"
  tarball="$IMAGE_CACHE/base-$key.tar"
  if buildah inspect --type image "$base" >/dev/null 2>&1; then
    say "base: $base cached"
  else
    if [[ -s "$tarball" ]]; then
      say "base: importing cached ${tarball#"$CACHE"/}"
    else
      say "base: mmdebstrap $BASE_SUITE minbase + ${BASE_PACKAGES//,/ } (cold: about a minute)"
      dpkg_opts=(); for o in "${BASE_DPKG_OPTS[@]}"; do dpkg_opts+=("--dpkgopt=$o"); done
      run mmdebstrap --variant=minbase --include="$BASE_PACKAGES" \
        --hook-dir="$BASE_HOOKS" --aptopt='APT::Install-Recommends "false"' "${dpkg_opts[@]}" \
        "$BASE_SUITE" "$tarball.tmp.tar" "${BASE_MIRRORS[@]}"
      mv "$tarball.tmp.tar" "$tarball"
      find "$IMAGE_CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "base-$key.tar" -delete
      say "base: importing $(du -m "$tarball" | cut -f1) MB into buildah"
    fi
    ctr="$(buildah from scratch 2>>"$LOG")" || fail "buildah from scratch"
    run buildah add "$ctr" "$tarball" /
    run buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env LANG=C.UTF-8 --cmd '["python3"]' \
      --label org.opencontainers.image.description="Debian $BASE_SUITE minbase with ${BASE_PACKAGES//,/ }" "$ctr"
    run buildah commit --rm "$ctr" "$base"
  fi
fi

# 3. The Dockerfile, as is; unchanged layers come from buildah's cache.
# The RUN steps download from PyPI trusting the host's CA bundle (mounted read-only for those steps
# only, never written into a layer), so a build behind a TLS-inspecting proxy works as pip does here.
ca_mount=()
ca="${COMPTROLLER_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[[ -r "$ca" ]] && ca_mount=(--volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
say "build: Dockerfile with PYTHON_IMAGE=$base (cold: about 2 minutes)"
run buildah bud --isolation chroot --layers --force-rm --pull=false --format oci "${ca_mount[@]}" \
  --build-arg "PYTHON_IMAGE=$base" --tag "$image" --file "$repo/Dockerfile" "$repo"
image_id="$(buildah inspect --type image --format '{{.FromImageID}}' "$image" 2>>"$LOG")" \
  || fail "buildah inspect $image"

# 4. The OCI archive, rewritten only when the image changed.
stamp="$IMAGE_CACHE/exported-$version.id"
if [[ -s "$out" && -f "$stamp" && "$(cat "$stamp")" == "$image_id $(stat -c %s-%Y "$out")" ]]; then
  say "export: ${out#"$repo"/} is up to date"
  touch "$out"  # fresh for whoever compares it with the sources' times (e2e/test_image.py)
  echo "$image_id $(stat -c %s-%Y "$out")" >"$stamp"
else
  say "export: ${out#"$repo"/}"
  rm -f "$out.tmp"
  run buildah push "$image" "oci-archive:$out.tmp:$version"
  mv "$out.tmp" "$out"
  echo "$image_id $(stat -c %s-%Y "$out")" >"$stamp"
fi
# Intermediate images are the next warm build's cache; each source change leaves old ones behind,
# so past a size they are dropped (the base and the tagged image stay).
storage_mb="$(du -sm "$STORAGE" | cut -f1)"
if (( storage_mb > ${COMPTROLLER_IMAGE_STORAGE_MB:-4096} )); then
  say "storage: $storage_mb MB, pruning build cache layers"
  { buildah rm --all && buildah rmi --prune; } >>"$LOG" 2>&1 || say "storage: pruning failed (see the log); the image is built"
fi
say "done: ${out#"$repo"/} ($(du -m "$out" | cut -f1) MB, image ${image_id:0:12}), in $((SECONDS - start))s"
