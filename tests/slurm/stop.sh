#!/usr/bin/env bash
# Stops the cluster tests/slurm/start.sh started: tests/slurm/stop.sh [STATE_DIR]
exec "$(dirname "$0")/start.sh" stop "$@"
