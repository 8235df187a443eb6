#!/usr/bin/env bash
# The compatibility run (`make compat`): one virtualenv per edge of the supported range,
# the package installed from this tree (not editable), and the suite's core run against
# it: the unit tests and the integration tests of the app, tasks, transport, bulk
# publishing, dead letters and unique tasks. Prints what each edge installed, the result
# and the time; exits non-zero if any edge failed.
#
#   scripts/compat.sh [EDGE...]      EDGE: floor, newest (default: both)
#
# The edges: "floor" pins the oldest versions pyproject.toml allows; "newest" lets pip
# pick the newest within the pins. Keep FLOOR in step with pyproject.toml and with
# _celery_compat.FLOOR / _kombu_compat.FLOOR.
set -euo pipefail

PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${COMPAT_DIR:-$ROOT/build/compat}
BUDGET=${COMPAT_BUDGET:-900}
FLOOR=("celery==5.7.0" "kombu[redis]==5.7.0" "redis==6.4.0")
TESTS=(
  tests/unit
  tests/integration/test_app_integration.py
  tests/integration/test_tasks_integration.py
  tests/integration/test_transport_integration.py
  tests/integration/test_bulk_integration.py
  tests/integration/test_deadletter_integration.py
  tests/integration/test_unique_integration.py
)

edges=("$@")
[[ ${#edges[@]} -gt 0 ]] || edges=(floor newest)

summary=()
status=0
for edge in "${edges[@]}"; do
  case "$edge" in
    floor) pins=("${FLOOR[@]}"); upgrade=() ;;
    newest) pins=(); upgrade=(--upgrade --upgrade-strategy eager) ;;
    *) echo "compat: unknown edge '$edge' (floor or newest)" >&2; exit 2 ;;
  esac
  venv="$WORK/$edge"
  echo "== compat $edge: $venv"
  start=$SECONDS
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  # (This machine's pip configuration warns about every missing local index folder.)
  pip=("$venv/bin/python" -m pip -q --disable-pip-version-check)
  "${pip[@]}" install -U 'pip>=25.1' 2> >(grep -v '^WARNING: Location' >&2)
  # --group reads pyproject.toml from the current directory: run from ROOT.
  (cd "$ROOT" && "${pip[@]}" install "${upgrade[@]}" . "${pins[@]}" --group test) \
    2> >(grep -v '^WARNING: Location' >&2)
  versions=$("$venv/bin/python" -c 'import importlib.metadata as m, sys
print(f"python {sys.version.split()[0]}, " + ", ".join(f"{p} {m.version(p)}" for p in ("celery", "kombu", "redis", "billiard", "vine")))')
  setup=$((SECONDS - start))
  echo "   $versions (set up in ${setup} s)"
  start=$SECONDS
  # The src/ layout keeps the tree's package off sys.path: `import celeryredis` is the
  # installed one (printed below).
  set +e
  (cd "$ROOT" && timeout "$BUDGET" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    --timeout=120 --durations=5 "${TESTS[@]}" > "$WORK/$edge.log" 2>&1)
  rc=$?
  set -e
  took=$((SECONDS - start))
  result=$(tail -n 1 "$WORK/$edge.log")
  where=$("$venv/bin/python" -c 'import celeryredis; print(celeryredis.__file__)')
  echo "   celeryredis from $where"
  echo "   $result (exit $rc, tests ${took} s; log $WORK/$edge.log)"
  summary+=("$edge: $versions -> $result [setup ${setup} s, tests ${took} s]")
  [[ $rc -eq 0 ]] || status=1
done

echo "== compat summary"
printf '   %s\n' "${summary[@]}"
exit $status
