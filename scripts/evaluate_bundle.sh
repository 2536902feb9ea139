#!/usr/bin/env bash
# Every held-out figure of a bundle, as docs/RESULTS.md reports them for the shipped one:
#   bash scripts/evaluate_bundle.sh [BUNDLE (cmrsdk/demo/bundle)] [OUT (docs/results/shipped)]
# writes OUT/acdc_heldout (the 20 held-out ACDC patients: baseline, routed and oracle routing,
# Tables 1-3), OUT/mnms (the 4 M&Ms subjects), OUT/sunnybrook (the 2 Sunnybrook series) and
# OUT/{acdc,mnms,sunnybrook}_mirroring (routed with test-time mirroring), each with report.md and
# its CSVs. Needs ../shared/data; about 6 minutes on 2 idle cores. Extra arguments after OUT go to every
# `cmrsdk evaluate` (e.g. --precision bf16).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bundle="${1:-cmrsdk/demo/bundle}"
out="${2:-docs/results/shipped}"
shift $(( $# < 2 ? $# : 2 ))
data=../shared/data
cmrsdk evaluate --bundle "$bundle" --data "$data/acdc/training" --every 5 --modes baseline routed oracle \
  -o "$out/acdc_heldout" "$@"
cmrsdk evaluate --bundle "$bundle" --data "$data/acdc/training" --every 5 --modes routed --mirroring \
  -o "$out/acdc_mirroring" "$@"
cmrsdk evaluate --bundle "$bundle" --data "$data/mnms" --modes baseline routed oracle -o "$out/mnms" "$@"
cmrsdk evaluate --bundle "$bundle" --data "$data/sunnybrook" --modes baseline routed -o "$out/sunnybrook" "$@"
cmrsdk evaluate --bundle "$bundle" --data "$data/mnms" --modes routed --mirroring -o "$out/mnms_mirroring" "$@"
cmrsdk evaluate --bundle "$bundle" --data "$data/sunnybrook" --modes routed --mirroring -o "$out/sunnybrook_mirroring" "$@"
