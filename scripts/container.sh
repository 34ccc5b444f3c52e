#!/usr/bin/env bash
# Build the qworker image on a machine with no container engine and no registry access.
#
#   scripts/container.sh              # base image (cached) + localhost/qworker:test
#   scripts/container.sh --base-only  # only the debootstrapped base image
#   scripts/container.sh --rebuild-base
#
# 1. Installs podman, buildah and debootstrap with apt-get when missing (needs root, as in CI).
# 2. Makes a local base image without pulling anything: debootstrap a minimal Debian bookworm
#    (variant minbase, plus python3, python3-venv, python3-pip) from the Debian mirror this machine's
#    apt already uses, and `podman import` it. Skipped when the image already exists.
# 3. `podman build --isolation chroot` of the repository's Dockerfile on that base.
#
# Local-only build configuration lives here, not in the Dockerfile: when this host's pip trusts a CA
# bundle (PIP_CERT, pip's global.cert, REQUESTS_CA_BUNDLE or SSL_CERT_FILE, e.g. for an egress proxy)
# or uses an http(s) index (PIP_INDEX_URL, global.index-url), that bundle and a pip.conf naming it
# are bind-mounted into the build's RUN steps only; they do not end up in the image.
#
# Every build with changed sources leaves untagged layers behind (the layer cache); reclaim the
# space with `podman image prune`.
#
# Environment: QWORKER_BASE_IMAGE (localhost/qworker-base:bookworm), QWORKER_IMAGE
# (localhost/qworker:test), QWORKER_DEBIAN_MIRROR (default: from /etc/apt/sources.list{,.d}),
# QWORKER_BUILD_CA (a CA bundle file for pip inside the build).
set -euo pipefail

BASE_IMAGE="${QWORKER_BASE_IMAGE:-localhost/qworker-base:bookworm}"
IMAGE="${QWORKER_IMAGE:-localhost/qworker:test}"
SUITE=bookworm
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

base_only=0
rebuild_base=0
for arg in "$@"; do
    case "$arg" in
        --base-only) base_only=1 ;;
        --rebuild-base) rebuild_base=1 ;;
        -h | --help) sed -n -e '2,/^set /{' -e 's/^# \{0,1\}//p' -e '}' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { printf '[container.sh] %s\n' "$*" >&2; }

timed() {  # timed <label> <command...>: run it and log how long it took.
    local label="$1" start=$SECONDS
    shift
    "$@"
    log "$label took $((SECONDS - start))s"
}

ensure_tools() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v buildah >/dev/null || missing+=(buildah)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    ((${#missing[@]} == 0)) && return 0
    if [[ $EUID -ne 0 ]]; then
        echo "missing ${missing[*]}; install them or run as root" >&2
        exit 1
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

debian_mirror() {  # The non-security Debian mirror apt uses here (deb822 or one-line format).
    if [[ -n "${QWORKER_DEBIAN_MIRROR:-}" ]]; then
        echo "$QWORKER_DEBIAN_MIRROR"
        return
    fi
    local uri
    uri="$(
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
            2>/dev/null |
            sed -n -E -e 's/^URIs:[[:space:]]*//p' -e 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//p' |
            tr ' ' '\n' | grep -E '^https?://.*/debian/?$' | head -n 1 || true
    )"
    echo "${uri:-http://deb.debian.org/debian}"
}

build_base() {
    if [[ $rebuild_base -eq 0 ]] && podman image exists "$BASE_IMAGE"; then
        log "base image $BASE_IMAGE exists; skipping debootstrap (--rebuild-base to redo it)"
        return
    fi
    local mirror rootfs
    mirror="$(debian_mirror)"
    rootfs="$(mktemp -d /var/tmp/qworker-rootfs.XXXXXX)"
    # shellcheck disable=SC2064  # expand now: the path is fixed.
    trap "rm -rf '$rootfs'" EXIT
    log "debootstrap $SUITE (minbase) from $mirror"
    local start=$SECONDS
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip \
        "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
        cat "$rootfs.log" >&2
        exit 1
    }
    rm -f "$rootfs.log"
    log "debootstrap took $((SECONDS - start))s"
    # What an image does not need: downloaded .debs, apt lists, docs, man pages, locales.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
        "$rootfs"/tmp/* "$rootfs"/var/tmp/*
    log "importing $BASE_IMAGE"
    tar -C "$rootfs" --numeric-owner -c . | timed "podman import" podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase $SUITE from $mirror" \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
}

pip_host_setting() {  # pip_host_setting <ENV_NAME> <config key>: this host's pip setting, if any.
    local value="${!1:-}"
    if [[ -z "$value" ]] && command -v python3 >/dev/null; then
        value="$(python3 -m pip config get "$2" 2>/dev/null || true)"
    fi
    echo "$value"
}

build_image() {
    local args=(--isolation chroot --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE")
    # pip inside the build gets this host's CA bundle and (an http(s)) index, if it has them.
    local ca index conf=""
    ca="${QWORKER_BUILD_CA:-$(pip_host_setting PIP_CERT global.cert)}"
    ca="${ca:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}}"
    index="$(pip_host_setting PIP_INDEX_URL global.index-url)"
    [[ "$index" =~ ^https?:// ]] || index=""
    if [[ -n "$ca" && -f "$ca" ]]; then
        conf+="cert = /etc/ssl/qworker-build-ca.pem"$'\n'
        args+=(--volume "$(readlink -f "$ca"):/etc/ssl/qworker-build-ca.pem:ro")
        log "pip in the build trusts $ca"
    fi
    if [[ -n "$index" ]]; then
        conf+="index-url = $index"$'\n'
        log "pip in the build uses the index $index"
    fi
    if [[ -n "$conf" ]]; then
        local file
        file="$(mktemp /tmp/qworker-pip.XXXXXX)"
        # shellcheck disable=SC2064  # expand now: the path is fixed.
        trap "rm -f '$file'" EXIT
        printf '[global]\n%s' "$conf" >"$file"
        chmod 0644 "$file"
        # Bind mounts exist during RUN steps only: nothing of this ends up in the image.
        args+=(--volume "$file:/etc/pip.conf:ro")
    fi
    log "building $IMAGE on $BASE_IMAGE"
    timed "podman build" podman build "${args[@]}" "$ROOT"
}

ensure_tools
build_base
[[ $base_only -eq 1 ]] || build_image
