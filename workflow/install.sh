#!/usr/bin/env bash
# Installs everything Echo needs on a fresh Debian machine (root, Python 3.11, no GPU):
#   apt: espeak-ng (the embedded corpus's synthesiser) and the FFmpeg shared libraries
#        (torchcodec decodes m4a/mp3 through them);
#   a virtual environment (kept outside the clone so CI re-runs reuse it) with the
#   torch/torchaudio/torchcodec triple that imports and runs on CPU, and this package (editable).
# Idempotent: re-running only re-links the editable install when nothing changed.
# Usage: bash workflow/install.sh [--test]   (then: source .venv/bin/activate)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ECHO_VENV:-$HOME/.cache/echo/venv}"
extras=""; [[ "${1:-}" == "--test" ]] && extras="[test]"

need_apt=()
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
for lib in libavcodec59 libavformat59 libavutil57 libswresample4 libswscale6 libavfilter8 libavdevice59; do
  dpkg -s "$lib" >/dev/null 2>&1 || need_apt+=("$lib")
done
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)
dpkg -s libespeak-ng1 >/dev/null 2>&1 || need_apt+=(libespeak-ng1)
if ((${#need_apt[@]})); then
  echo "[install] apt: ${need_apt[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

stamp="$venv/.echo-deps-$(sha256sum "$here/pyproject.toml" | cut -c1-16)$extras"
if [[ ! -f "$stamp" ]]; then
  echo "[install] python environment in $venv"
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$here$extras"
  touch "$stamp"
else
  "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$here" >/dev/null
fi
ln -sfn "$venv" "$here/.venv"
"$venv/bin/python" -c "import torch, torchaudio, torchcodec, echo; print(f'[install] ok: torch {torch.__version__}, torchaudio {torchaudio.__version__}')"
