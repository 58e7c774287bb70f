#!/usr/bin/env bash
# The README's Quick start: `./quickstart.sh sample [ddim sample options]` or `./quickstart.sh test`
# (and `./quickstart.sh serve [ddim serve options]`: the web page; `./quickstart.sh docs`: the
# documentation at http://127.0.0.1:8000/, or `./quickstart.sh docs build` into site/).
# Either one creates (or reuses) the virtual environment .venv and installs the package into it.
# Set DDIM_CONSTRAINTS to a pip constraints file to pin versions (CI pins torch this way).
set -euo pipefail
cd "$(dirname "$0")"

venv=${DDIM_VENV:-.venv}
python=${PYTHON:-python3}

die() { echo "quickstart: $*" >&2; exit 2; }

setup() {  # $1: the pip extra to install ("", "test", "serve" or "docs")
    local spec=. stamp="$venv/.ddim-installed"
    [ -n "$1" ] && spec=".[$1]" && stamp="$stamp-$1"
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
            || die "Python 3.10 or newer is needed; set PYTHON=/path/to/python3.x"
        "$python" -m venv "$venv"
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        local pin=()
        [ -n "${DDIM_CONSTRAINTS:-}" ] && pin=(-c "$DDIM_CONSTRAINTS")
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec" "${pin[@]}"
        touch "$stamp"
    fi
}

case "${1:-}" in
    sample)
        shift
        setup ""
        exec "$venv/bin/ddim" sample "$@"
        ;;
    serve)
        shift
        setup serve
        exec "$venv/bin/ddim" serve "$@"
        ;;
    docs)
        shift
        setup docs
        export NO_MKDOCS_2_WARNING=1
        if [ "${1:-}" = build ]; then
            shift
            exec "$venv/bin/mkdocs" build --strict "$@"
        fi
        exec "$venv/bin/mkdocs" serve "$@"
        ;;
    test)
        shift
        setup test
        "$venv/bin/ruff" check src tests benchmarks
        # One pytest worker a core, at most 4 (each test runs on one thread); `-n 0` runs
        # them in this process.
        cores=$(nproc 2> /dev/null || echo 1)
        workers=$(( cores < 4 ? cores : 4 ))
        exec "$venv/bin/python" -m pytest -q -n "$workers" "$@"
        ;;
    *)
        die "usage: ./quickstart.sh sample [OPTIONS] | test [PYTEST ARGS] | serve [OPTIONS] | docs [build]"
        ;;
esac
