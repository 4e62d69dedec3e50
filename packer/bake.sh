#!/usr/bin/env bash
# Runs inside the Packer build instance as root: installs haagent and its unit, raises
# journald's rate limits, optionally installs Docker and pre-pulls images, then checks the image.
set -euo pipefail

# Docker, when baked in, is a pinned version held against upgrades: the Replicated installer
# recommends one Docker version per Replicated release and, finding a newer one, asks "Do you
# want to proceed anyway?" and exits 0 having installed nothing (haagent passes no-docker on
# an image with Docker, so the script does not compare, but the version must still be one that
# Replicated release supports). Never "the newest".

# The packages that make up the Docker engine, in both flavours: docker-ce with docker-ce-cli
# and containerd.io (Docker's repository), docker.io with containerd and runc (Ubuntu's). An
# upgrade of any of them (unattended-upgrades, apt upgrade) changes the engine under Replicated,
# so every one installed is held, not only the one named.
DOCKER_SET="docker-ce docker-ce-cli containerd.io docker.io containerd runc"

hold_docker() {
  local held=()
  for p in $DOCKER_SET; do
    if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ]; then
      held+=("$p")
    fi
  done
  if [ "${#held[@]}" -eq 0 ]; then
    echo "bake: none of the Docker packages ($DOCKER_SET) is installed" >&2
    exit 1
  fi
  apt-mark hold "${held[@]}"
}

if [ "${1:-}" = "hold-docker" ]; then
  hold_docker
  exit 0
fi

if [ "${PREINSTALL_DOCKER:-false}" = "true" ] && [ -z "${DOCKER_VERSION:-}" ]; then
  echo "bake: preinstall_docker needs docker_version, the exact apt version of ${DOCKER_PACKAGE:-docker.io} to install and hold (apt-cache madison ${DOCKER_PACKAGE:-docker.io})" >&2
  exit 1
fi

install -m 0755 /tmp/haagent /usr/local/bin/haagent
/usr/local/bin/haagent install
install -d -m 0755 /etc/systemd/journald.conf.d
install -m 0644 /tmp/journald-haagent.conf /etc/systemd/journald.conf.d/haagent.conf

if [ "${PREINSTALL_DOCKER:-false}" = "true" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  pkgs=("${DOCKER_PACKAGE:-docker.io}=${DOCKER_VERSION}")
  # docker-ce 18.09 and later come with docker-ce-cli of the same version: pin it too, or apt
  # takes the newest CLI.
  if [ "${DOCKER_PACKAGE:-docker.io}" = "docker-ce" ] && apt-cache madison docker-ce-cli | grep -qF " ${DOCKER_VERSION} "; then
    pkgs+=("docker-ce-cli=${DOCKER_VERSION}")
  fi
  apt-get install -y -qq --allow-downgrades "${pkgs[@]}"
  hold_docker
  systemctl enable docker
  for image in ${PREPULL_IMAGES:-}; do
    docker pull "$image"
  done
fi

bash /tmp/check-image.sh /
rm -f /tmp/haagent /tmp/journald-haagent.conf /tmp/check-image.sh
