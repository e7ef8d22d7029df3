#!/usr/bin/env bash
# Debian packages the integration tests run for real: a registry and skopeo, Mosquitto, and a Docker engine
# (docker.io: dockerd, containerd, runc) with busybox-static to build tiny images without internet.
# Installed when missing; where that is impossible (not root, no apt) the tests that need them skip.
set -euo pipefail
missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
# busybox-static, not busybox: the images copy /bin/busybox alone, so it must be statically linked.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || missing+=(busybox-static)
# Mosquitto for the MQTT device channel (the tests start it when it is down; mosquitto_sub counts).
command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} for the integration tests" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "warning: cannot install ${missing[*]}; the tests that need them will be skipped" >&2
fi
