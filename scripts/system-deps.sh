#!/usr/bin/env bash
# Installs the Debian packages the grader and its tests use, when we are root and they are missing.
# bubblewrap: the kernel sandbox. redis-server: the Celery broker for scale-out tests.
# chromium: renders the class summary page in a test. python3: the distribution's own Python,
# which courses make their venvs of (tests/test_system_python.py grades from such a venv).
# Not root: say what is missing and go on.
set -u
want=()
command -v bwrap >/dev/null 2>&1 || want+=(bubblewrap)
command -v redis-server >/dev/null 2>&1 || want+=(redis-server)
command -v chromium >/dev/null 2>&1 || want+=(chromium)
[ -x /usr/bin/python3 ] || want+=(python3)
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: installing ${want[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null \
        || echo "system-deps: could not install ${want[*]}; the grader runs unsandboxed and some tests skip" >&2
else
    echo "system-deps: missing ${want[*]} (install them with your package manager, e.g. sudo apt-get install ${want[*]})." >&2
    echo "system-deps: without bubblewrap the grader runs learner code with resource limits only." >&2
fi
exit 0
