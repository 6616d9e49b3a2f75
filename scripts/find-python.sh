#!/usr/bin/env bash
# Prints the path of a CPython >= 3.12 interpreter, or fails with a clear message.
# Looks on PATH first, then in pyenv's versions (pyenv machines keep 3.12 there).
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }
for cand in python3.12 python3.13 python3.14 python3; do
    p=$(command -v "$cand" 2>/dev/null) || continue
    if ok "$p"; then echo "$p"; exit 0; fi
done
for root in "${PYENV_ROOT:-$HOME/.pyenv}" /root/.pyenv; do
    for p in "$root"/versions/3.12*/bin/python3 "$root"/versions/3.13*/bin/python3; do
        if [ -x "$p" ] && ok "$p"; then echo "$p"; exit 0; fi
    done
done
echo "error: hotlink needs Python >= 3.12; install it (e.g. 'pyenv install 3.12') and retry" >&2
exit 1
