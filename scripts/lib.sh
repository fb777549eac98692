# Shared setup for scripts/run and scripts/test: system packages, virtualenv.
# Sourced, not executed.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

# apt_install PACKAGE... : install the Debian packages that are missing.
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        echo "missing system packages: ${missing[*]} (install them with your package manager)" >&2
        return 1
    fi
    echo "installing Debian packages: ${missing[*]}" >&2
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# need_venv_module : Debian's python3 makes virtualenvs only with python3-venv.
need_venv_module() {
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3-venv
    fi
}

# setup_venv LOCK : create .venv, install the locked dependencies of requirements/LOCK.txt
# (`run` or `dev`, hash-checked; scripts/lock refreshes them) and the project itself, editable.
setup_venv() {
    local lock="$REPO/requirements/$1.txt"
    need_venv_module
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    # --require-hashes: every package, build backend included, is the one the lock names.
    "$VENV/bin/python" -m pip install -q --require-hashes \
        -r "$REPO/requirements/build.txt" -r "$lock"
    # The project alone: its dependencies are in already, and the backend is the locked one.
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$REPO"
}
