#!/bin/bash
# Lets systemd give the tasks process its drain. On a deploy or an instance's shutdown systemd
# stops each Procfile process: SIGTERM, then SIGKILL after the unit's stop timeout (systemd's
# default, 90 s). The tasks process drains for SLUICE_TASKS_GRACE_S, then cleans up; this sets its
# unit's stop timeout to SLUICE_TASKS_STOP_TIMEOUT_S (the stack renders both from the
# configuration, sluice.settings.TasksSettings) in a drop-in, which a daemon-reload applies to the
# running unit. EB names its units itself: the one whose command runs `worker.tasks` is taken.
# The bundle runs the same file after configuration-only deploys (.platform/confighooks/postdeploy).
set -euo pipefail

get_config="${SLUICE_GET_CONFIG:-/opt/elasticbeanstalk/bin/get-config}"
systemctl="${SLUICE_SYSTEMCTL:-systemctl}"
units="${SLUICE_SYSTEMD_DIR:-/etc/systemd/system}"

stop_s="$("$get_config" environment -k SLUICE_TASKS_STOP_TIMEOUT_S 2>/dev/null || true)"
if [[ ! "$stop_s" =~ ^[0-9]+$ ]]; then
  echo "sluice: no SLUICE_TASKS_STOP_TIMEOUT_S; systemd's default stop timeout stays" >&2
  exit 0
fi

unit=""
for candidate in $("$systemctl" list-units --type=service --all --no-legend --plain | awk '{print $1}'); do
  if "$systemctl" show --property=ExecStart --value "$candidate" | grep -q "worker\.tasks"; then
    unit="$candidate"
  fi
done
if [[ -z "$unit" ]]; then
  echo "sluice: no systemd unit runs worker.tasks; stop timeout not set" >&2
  exit 0
fi

mkdir -p "$units/$unit.d"
printf '[Service]\nTimeoutStopSec=%s\n' "$stop_s" > "$units/$unit.d/50-sluice-drain.conf"
"$systemctl" daemon-reload
echo "sluice: $unit stops within ${stop_s} s"
