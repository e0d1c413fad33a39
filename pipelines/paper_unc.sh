#!/usr/bin/env bash
# The DMN paper schedule on unc (see pipelines/paper.sh for the options, e.g. --nproc 8 for torchrun).
exec "$(dirname "$0")/paper.sh" unc "$@"
