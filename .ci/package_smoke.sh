#!/usr/bin/env bash
# Packaging stage of CI (run by .ci/run after the tests): build the one-folder app with `make package`,
# then check the frozen executable the way a user meets it: what is inside, --version, --self-test,
# `score` on the sample folder, and the GUI starting to a visible window under Xvfb (offscreen if Xvfb
# is not installed).
# Usage: .ci/package_smoke.sh [--no-build]   (--no-build: check an existing dist/pneumo-desktop)
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
[ "${1:-}" = "--no-build" ] && build=0

app=dist/pneumo-desktop
exe=$app/pneumo-desktop
bundle=$app/_internal
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A fresh home: no settings or logs of earlier runs, nothing written to the CI user's home.
export HOME=$work/home XDG_CONFIG_HOME=$work/home/.config XDG_DATA_HOME=$work/home/.local/share
mkdir -p "$HOME"

step() { echo "--- package smoke: $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

if [ "$build" = 1 ]; then
    step "make package"
    start=$(date +%s)
    nice make package
    echo "built in $(( $(date +%s) - start )) s"
fi
[ -x "$exe" ] || fail "$exe was not built"
echo "size: $(du -sh "$app" | cut -f1)"

step "bundle contents"
for f in resources/model/model.tflite resources/model/model_card.json resources/samples/ATTRIBUTION.md \
         resources/icons/app.png resources/linux/pneumo-desktop.desktop licenses/LICENSE \
         licenses/THIRD_PARTY_NOTICES.md licenses/VERSIONS.txt licenses/Qt-PySide6/LGPL-3.0.txt; do
    [ -f "$bundle/$f" ] || fail "missing from the bundle: $f"
done
for f in LICENSE THIRD_PARTY_NOTICES.md install-desktop-entry.sh; do
    [ -f "$app/$f" ] || fail "missing next to the executable: $f"
done
[ ! -e "$bundle/resources/model/model.keras" ] || fail "model.keras is bundled (it is for retraining only)"
for forbidden in tensorflow keras trainer matplotlib scipy skimage torch pytest IPython tkinter cv2 opencv_python_headless.libs \
                 PySide6/QtQml.abi3.so \
                 PySide6/QtQuick.abi3.so PySide6/QtNetwork.abi3.so PySide6/Qt/translations; do
    [ ! -e "$bundle/$forbidden" ] || fail "excluded module bundled anyway: $forbidden"
done
dangling=$(find "$app" -xtype l)
[ -z "$dangling" ] || fail "dangling symlinks: $dangling"
if command -v ldd >/dev/null; then
    # every bundled binary must find its libraries (bundled, or the few system ones PyInstaller leaves
    # out: libc, libGL/libEGL, ...); the bootloader puts _internal on the library path.
    missing=$(find "$bundle" -type f -name "*.so*" -print0 | xargs -0 -n 50 env LD_LIBRARY_PATH="$bundle" ldd 2>/dev/null \
              | grep "not found" | sort -u || true)
    [ -z "$missing" ] || fail "unresolved libraries: $missing"
fi

step "--version"
"$exe" --version | tee "$work/version.txt"
grep -q "^pneumo-desktop " "$work/version.txt" || fail "--version printed no version"

step "--self-test"
if ! "$exe" --self-test 2>&1 | tee "$work/self_test.txt"; then
    # PACKAGE_SMOKE_UNTRAINED_MODEL=1: a development build with an untrained test model (PNEUMO_MODEL_DIR),
    # whose labels are random; the checksum and the run itself must still work. Never set in CI.
    if [ "${PACKAGE_SMOKE_UNTRAINED_MODEL:-0}" = 1 ] && grep -q "sha256 of model.tflite verified" "$work/self_test.txt"; then
        echo "(labels wrong as expected for an untrained test model)"
    else
        fail "--self-test of the frozen app failed"
    fi
fi

step "score resources/samples"
"$exe" score resources/samples -o "$work/scores.csv" -q
# one row per file in the folder (ATTRIBUTION.md becomes an error row), every image scored
files=$(find resources/samples -maxdepth 1 -type f ! -name '.*' | wc -l)
images=$(find resources/samples -maxdepth 1 -type f -iname '*.jpeg' | wc -l)
rows=$(( $(wc -l < "$work/scores.csv") - 1 ))
scored=$(tail -n +2 "$work/scores.csv" | awk -F, '$2 != ""' | wc -l)
echo "CSV: $rows rows for $files files, $scored scored for $images images"
[ "$rows" -eq "$files" ] || fail "expected $files rows in the CSV, found $rows"
[ "$scored" -eq "$images" ] || fail "expected $images scored rows, found $scored"
head -1 "$work/scores.csv" | grep -q "^path,probability,prediction,threshold,model_sha256,image_sha256,error" \
    || fail "unexpected CSV header: $(head -1 "$work/scores.csv")"

step "listen (DICOM node): C-ECHO, then a sample as Secondary Capture (DCMTK's img2dcm) scored"
if command -v echoscu >/dev/null && command -v storescu >/dev/null && command -v img2dcm >/dev/null; then
    port=$(( 20000 + RANDOM % 20000 ))
    "$exe" listen --bind 127.0.0.1 --port "$port" --spool "$work/spool" >"$work/listen.log" 2>&1 &
    listen_pid=$!
    for _ in $(seq 150); do echoscu -aec PNEUMO 127.0.0.1 "$port" 2>/dev/null && break; sleep 0.2; done
    echoscu -aec PNEUMO 127.0.0.1 "$port" || fail "the node does not answer C-ECHO: $(cat "$work/listen.log")"
    img2dcm resources/samples/IM-0265-0001.jpeg "$work/sample.dcm"
    storescu -xy -aec PNEUMO 127.0.0.1 "$port" "$work/sample.dcm" || fail "C-STORE to the node failed"  # -xy: JPEG
    for _ in $(seq 150); do grep -q ",scored," "$work/spool/results.csv" 2>/dev/null && break; sleep 0.2; done
    kill "$listen_pid"
    wait "$listen_pid" || true
    grep -q ",scored," "$work/spool/results.csv" || fail "the node scored nothing: $(cat "$work/listen.log")"
    # the frozen app's results process (multiprocessing spawn through the launcher's freeze_support) must
    # have built the results: the in-process fallback would score too, so its warning is what tells
    ! grep -q "process that builds results failed" "$work/listen.log" \
        || fail "the packaged node could not use its results process: $(cat "$work/listen.log")"
    ! grep -q "Traceback" "$work/listen.log" || fail "a traceback in the node's log: $(cat "$work/listen.log")"
    echo "scored by the node: $(tail -1 "$work/spool/results.csv" | cut -d, -f2,3)"
else
    echo "DCMTK not installed: skipped"
fi

step "GUI start"
# Start the GUI, wait for its main window (xcb under Xvfb) or its start-up log line (offscreen), then
# close it. Passing means: the frozen Qt found its plugins, the window was created, and the app was
# still running (no crash at start-up).
cat > "$work/gui_check.sh" <<'EOF'
set -u
exe=$1 log=$2
"$exe" > "$log" 2>&1 &
pid=$!
seen=""
for _ in $(seq 1 300); do  # up to 30 s on a slow CI machine
    kill -0 "$pid" 2>/dev/null || break
    if [ "${QT_QPA_PLATFORM:-}" = xcb ] && command -v xwininfo >/dev/null; then
        xwininfo -root -tree 2>/dev/null | grep -q '"Pneumo Desktop": ("pneumo-desktop"' && seen=window
    elif grep -q "Pneumo Desktop .* started" "$log"; then
        seen=log
    fi
    [ -n "$seen" ] && break
    sleep 0.1
done
sleep 1  # still alive a moment later: the model loader ran without taking the app down
alive=0; kill -0 "$pid" 2>/dev/null && alive=1
kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
echo "GUI: seen=${seen:-no} alive=$alive"
[ -n "$seen" ] && [ "$alive" = 1 ]
EOF
if command -v xvfb-run >/dev/null; then
    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1280x800x24" bash "$work/gui_check.sh" "$exe" "$work/gui.log" \
        || { tail -20 "$work/gui.log"; fail "the GUI did not start under Xvfb"; }
else
    echo "(xvfb-run not installed: offscreen platform)"
    QT_QPA_PLATFORM=offscreen bash "$work/gui_check.sh" "$exe" "$work/gui.log" \
        || { tail -20 "$work/gui.log"; fail "the GUI did not start (offscreen)"; }
fi
# Python tracebacks and the app's own ERROR records (not third-party warnings such as Mesa's).
if grep -E "Traceback|(ERROR|CRITICAL) pneumo_desktop" "$work/gui.log"; then fail "the GUI logged errors at start-up"; fi

step "passed"
