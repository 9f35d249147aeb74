# Sourced by the benchmarks that run the real release daemon as root: checks for root, builds the release binaries and
# makes a work dir that is cleaned up on exit, with every worker this run started. In: WORK_NAME (the dir's prefix).
# Out: TARGET_DIR, WIREBOT, WORK; the caller sets PID to the daemon's pid once started.
[ "$(id -u)" = 0 ] || { echo "needs root (tenant uids, cgroups)"; exit 1; }
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet -p supervisor -p worker --bins
WIREBOT="$(realpath "$TARGET_DIR/release/wirebot")"
# Not under /tmp: workers get a private /tmp that would hide their state.
WORK="$(mktemp -d "$(realpath "$TARGET_DIR")/${WORK_NAME:-bench}.XXXXXX")"
chmod 711 "$WORK"
cleanup() {
    [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null
    wait 2>/dev/null || true
    # Workers outlive the daemon by design: end this run's (their cwd is under $WORK).
    for p in /proc/[0-9]*; do
        case "$(readlink "$p/cwd" 2>/dev/null)" in "$WORK"/*) kill -9 "${p#/proc/}" 2>/dev/null || true ;; esac
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
