#!/usr/bin/env bash
# Installs everything Echo needs on a fresh Debian machine (root, Python 3.11, no GPU):
#   apt: espeak-ng (the embedded corpus's synthesiser), the FFmpeg shared libraries (torchcodec
#        decodes m4a/mp3 through them) and the ffmpeg command (codecs of the channel simulation),
#        and the packages of recorded voices for the real-voice sets (~90 MB);
#   the Python dependencies (the torch/torchaudio/torchcodec triple that imports and runs on CPU,
#   snakemake, dvc, mlflow, ...: about 6 GB) in ONE virtual environment shared by every checkout,
#   ~/.cache/echo/venv ($ECHO_VENV), which holds the dependencies only, never this package;
#   this checkout's own small virtual environment, .venv: its site-packages links the shared one
#   (a .pth file) and holds this checkout's package, editable, so each clone runs its own code;
#   .venv/bin has this venv's python and a launcher for every command of the dependencies
#   (pytest, snakemake, dvc, mlflow, ...) that runs it with that python.
# Idempotent: a second run checks and re-links in a few seconds; the dependencies are installed
# again only when pyproject.toml changes.
# Usage: bash workflow/install.sh [--test]   (then: source .venv/bin/activate)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="${ECHO_VENV:-$HOME/.cache/echo/venv}"
venv="$here/.venv"
extras=""; [[ "${1:-}" == "--test" ]] && extras="[test]"

need_apt=()
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
for lib in libavcodec59 libavformat59 libavutil57 libswresample4 libswscale6 libavfilter8 libavdevice59; do
  dpkg -s "$lib" >/dev/null 2>&1 || need_apt+=("$lib")
done
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)
dpkg -s libespeak-ng1 >/dev/null 2>&1 || need_apt+=(libespeak-ng1)
# recorded human voices for the real-voice dev and evaluation sets (echo/corpus/real_voices.py lists
# them with their licences; asterisk-core-sounds-en/es/fr are reserved and never installed here)
for pkg in asterisk-prompt-es-co asterisk-prompt-fr-armelle asterisk-prompt-it-menardi-wav \
           asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav fillets-ng-data fillets-ng-data-cs fillets-ng-data-nl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  echo "[install] apt: ${need_apt[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# -- the shared dependency environment ------------------------------------------------------------
stamp="$deps/.echo-deps-$(sha256sum "$here/pyproject.toml" | cut -c1-16)"
if [[ ! -f "$stamp$extras" && ! -f "$stamp[test]" ]]; then
  echo "[install] python dependencies in $deps (shared by every checkout)"
  [[ -x "$deps/bin/python" ]] || python3 -m venv "$deps"
  "$deps/bin/python" -m pip install -q --upgrade pip
  # pyproject.toml's dependencies (and the test extra), without the package itself
  mapfile -t reqs < <("$deps/bin/python" -c '
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(p["dependencies"] + (p["optional-dependencies"]["test"] if sys.argv[2] else [])))
' "$here/pyproject.toml" "$extras")
  "$deps/bin/python" -m pip install -q "${reqs[@]}"
  touch "$stamp$extras"
fi
deps_site="$("$deps/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# -- this checkout's environment --------------------------------------------------------------------
pyver() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; }
link_venv() {  # link_venv DIR: site-packages -> the shared one, launchers for its commands in DIR/bin
  local site
  site="$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$1/bin/python" - "$1" "$venv" "$deps" "$deps_site" "$site" <<'EOF'
import os, sys
from pathlib import Path

d, final, deps, deps_site, site = map(Path, sys.argv[1:])
# A module + .pth: like site.addsitedir(shared site-packages), minus the .pth files of an echo-jepa
# install there (the legacy layout), so `import echo` is always this checkout's.
(site / "_echo_deps.py").write_text(f'''"""Links the shared dependency environment (written by workflow/install.sh)."""
import os
import site
import sys

DEPS = {str(deps_site)!r}


def link():
    if not os.path.isdir(DEPS) or DEPS in sys.path:
        return
    sys.path.append(DEPS)
    known = set(sys.path)
    for name in sorted(os.listdir(DEPS)):
        if name.endswith(".pth") and "echo_jepa" not in name:
            site.addpackage(DEPS, name, known)
''')
(site / "_echo_deps.pth").write_text("import _echo_deps; _echo_deps.link()\n")

# Launchers: each console script of the shared environment, re-pointed at this venv's python
# (the shared one's python would not see this checkout's package); other executables are linked.
exe = f"{final}/bin/python"
bang = f"#!{exe}\n" if len(exe) < 126 and " " not in exe else f"#!/bin/sh\n'''exec' \"{exe}\" \"$0\" \"$@\"\n' '''\n"
manifest = d / ".echo-deps-bin"
ours = set(manifest.read_text().split()) if manifest.exists() else set()
made = []
for src in sorted((deps / "bin").iterdir()):
    name = src.name
    if name.startswith(("python", "activate", "Activate")) or name == "echo-jepa" or not os.access(src, os.X_OK):
        continue
    dst = d / "bin" / name
    if (dst.exists() or dst.is_symlink()) and name not in ours:
        continue  # this venv's own (e.g. echo-jepa)
    head = src.read_bytes()[:400].split(b"\n")
    if head[0].startswith(b"#!") and head[0][2:].strip().startswith(str(deps).encode()) and b"python" in head[0]:
        body = src.read_bytes().split(b"\n", 1)[1]
    elif head[0] == b"#!/bin/sh" and len(head) > 2 and head[1].startswith(b"'''exec'") and str(deps).encode() in head[1]:
        body = src.read_bytes().split(b"\n", 3)[3]
    else:
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src)
        made.append(name)
        continue
    new = bang.encode() + body
    if dst.is_symlink() or not dst.exists() or dst.read_bytes() != new:
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.write_bytes(new)
        dst.chmod(0o755)
    made.append(name)
for name in ours - set(made):  # commands the shared environment no longer has
    (d / "bin" / name).unlink(missing_ok=True)
manifest.write_text("\n".join(made) + "\n")
EOF
}
pkg_stamp=".echo-pkg-$(sha256sum "$here/pyproject.toml" | cut -c1-16)"
install_pkg() {  # install_pkg DIR: this checkout's package, editable, into DIR
  local out
  if ! out="$("$1/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$here" 2>&1)"; then
    echo "$out" >&2; exit 1  # setuptools' warnings only when it fails
  fi
  rm -f "$1"/.echo-pkg-*; touch "$1/$pkg_stamp"
}

if [[ -L "$venv" || ! -f "$venv/pyvenv.cfg" || "$(pyver "$venv/bin/python")" != "$(pyver "$deps/bin/python")" ]]; then
  echo "[install] this checkout's environment in $venv"
  # built beside and renamed into place: .venv is never half made (nor missing while it is built)
  tmp="$here/.venv.tmp"
  rm -rf "$tmp"
  "$deps/bin/python" -m venv --without-pip --prompt .venv "$tmp"
  link_venv "$tmp"
  install_pkg "$tmp"
  # the scripts and settings the venv tool and pip wrote name the temporary directory
  grep -rlF "$tmp" "$tmp/bin" "$tmp/pyvenv.cfg" 2>/dev/null | while read -r f; do
    [[ -L "$f" ]] || TMP="$tmp" FINAL="$venv" "$deps/bin/python" -c '
import os, sys
p = sys.argv[1]; s = open(p, "rb").read()
open(p, "wb").write(s.replace(os.environ["TMP"].encode(), os.environ["FINAL"].encode()))' "$f"
  done
  rm -rf "$tmp"/lib/python*/site-packages/__pycache__
  if [[ -L "$venv" ]]; then rm -f "$venv"; elif [[ -e "$venv" ]]; then rm -rf "$venv"; fi
  mv "$tmp" "$venv"
else
  link_venv "$venv"
  where="$("$venv/bin/python" -c 'import echo; print(echo.__file__)' 2>/dev/null || true)"
  if [[ ! -f "$venv/$pkg_stamp" || "$where" != "$here/echo/__init__.py" ]]; then
    install_pkg "$venv"
  fi
fi
# Before, the shared environment held an editable install of whichever checkout ran this last.
# Remove it when it is this checkout's (or not editable), now that .venv is this checkout's own;
# another checkout's is hidden (see _echo_deps.py) until that checkout runs this script.
if compgen -G "$deps_site/echo_jepa-*.dist-info" >/dev/null; then
  if ! compgen -G "$deps_site/__editable__*echo_jepa*" >/dev/null \
      || grep -qsF "'$here/echo'" "$deps_site"/__editable___echo_jepa_*_finder.py; then
    echo "[install] removing echo-jepa from the shared environment (each checkout has its own now)"
    "$deps/bin/python" -m pip uninstall -q -y echo-jepa
  fi
fi
"$venv/bin/python" -c "
import sys, torch, torchaudio, torchcodec, echo
assert echo.__file__ == sys.argv[1], f'echo imports from {echo.__file__}, expected {sys.argv[1]}'
print(f'[install] ok: torch {torch.__version__}, torchaudio {torchaudio.__version__}, echo from {sys.argv[1]}')
" "$here/echo/__init__.py"
