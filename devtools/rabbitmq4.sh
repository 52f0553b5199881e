#!/usr/bin/env bash
# Run a command against RabbitMQ 4 (the major the stack deploys: `broker.engine_version`) where the
# system's Debian 12 has only 3.10: `devtools/rabbitmq4.sh CMD...`.
#
# Debian 13's rabbitmq-server (4.0, on Erlang 27) needs a newer libc than Debian 12's, so it lives
# in a Debian 13 root of its own (debootstrap, about 40 s and 200 MB the first time; made in a
# temporary directory and renamed, so an interrupted build leaves nothing half made). CMD runs in a
# private mount namespace where the root sees the host's /tmp (the nodes' directories), /proc
# and /dev, with SLUICE_RABBITMQ_ROOT set: devtools/rabbitmq.py then starts every node and
# `rabbitmqctl` inside the root through chroot (same network, same processes). The mounts end with
# CMD, so nothing is left mounted under the root (deleting it can never reach the host's /tmp).
# Needs root (debootstrap, mount, chroot).
set -euo pipefail
ROOT="${SLUICE_RABBITMQ4_ROOT:-/var/cache/sluice/rabbitmq4-root}"
MIRROR="${SLUICE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [ "$(id -u)" != 0 ]; then
  echo "devtools/rabbitmq4.sh needs root (debootstrap, mount, chroot); run it with sudo" >&2
  exit 1
fi

mkdir -p "$(dirname "$ROOT")"
# One build at a time: a second run waits for the first's root instead of removing its partial one.
exec 9>"$ROOT.lock"
flock 9
if [ ! -x "$ROOT/usr/lib/rabbitmq/bin/rabbitmq-server" ]; then
  command -v debootstrap >/dev/null || {
    echo "debootstrap not found: apt-get install -y debootstrap (.ci/run does this)" >&2
    exit 1
  }
  partial="$ROOT.partial"
  # A debootstrap killed midway can leave its /proc and /sys mounted in there: unmount them
  # first (rm would refuse to cross them, and must never reach the host's).
  findmnt -rn -o TARGET | { grep -F "$partial/" || true; } | sort -r | xargs -r -n1 umount -l
  rm -rf --one-file-system "$partial"
  echo "making a Debian 13 root with rabbitmq-server in $ROOT" >&2
  debootstrap --variant=minbase --include=rabbitmq-server trixie "$partial" "$MIRROR" >&2
  mv "$partial" "$ROOT"
fi
exec 9>&-

# Inside the new mount namespace: the mounts, then CMD (exec: its exit status is ours).
exec unshare --mount --propagation private -- bash -c '
  set -euo pipefail
  root=$1; shift
  mount --bind /tmp "$root/tmp"
  # Node directories are under $TMPDIR when it is set: the root sees it at the same path.
  if [ -n "${TMPDIR:-}" ] && [ "${TMPDIR#/tmp}" = "$TMPDIR" ]; then
    mkdir -p "$root$TMPDIR"
    mount --bind "$TMPDIR" "$root$TMPDIR"
  fi
  mount -t proc proc "$root/proc"
  mount --bind /dev "$root/dev"
  export SLUICE_RABBITMQ_ROOT="$root"
  echo "RabbitMQ $(chroot "$root" dpkg-query -W -f="\${Version}" rabbitmq-server) in $root" >&2
  exec "$@"
' rabbitmq4 "$ROOT" "$@"
