#!/usr/bin/env bash
# Stop what tests/slurm/start.sh DIR started, by its pid files (slurmd, slurmctld, slurmdbd, MariaDB, munged),
# and remove its /etc/slurm/slurm.conf link.
set -uo pipefail
DIR=$(realpath -m "${1:?usage: stop.sh DIR}")
for name in slurmd-gpunode slurmd-cpunode slurmctld slurmdbd mariadb munged; do
  file=$DIR/run/$name.pid
  [ -s "$file" ] || continue
  pid=$(cat "$file")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    echo "[slurm] stopped $name (pid $pid)"
  fi
  rm -f "$file"
done
[ "$(readlink /etc/slurm/slurm.conf)" = "$DIR/slurm.conf" ] && rm -f /etc/slurm/slurm.conf
exit 0
