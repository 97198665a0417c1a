#!/usr/bin/env bash
# Start every service the test suite talks to, when it is not already running.
#
# Installs the Debian packages the tests need (OpenSSH server, Docker engine,
# busybox-static for locally built test images) when they are missing, then
# starts Redis, MariaDB, PostgreSQL, RabbitMQ and dockerd. Idempotent.
# Exits non-zero only when CI=true and a service could not be started.
set -u

ci=${CI:-false}
failed=()

need_pkgs=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need_pkgs+=(busybox-static)
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
command -v docker-compose >/dev/null 2>&1 || need_pkgs+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "services: installing ${need_pkgs[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"; } \
      >/tmp/boinc-pipeline-apt.log 2>&1 || echo "services: apt-get failed, see /tmp/boinc-pipeline-apt.log"
  else
    echo "services: not root, cannot install ${need_pkgs[*]}"
  fi
fi

wait_for() { # name, check command...
  local name=$1; shift
  for _ in $(seq 1 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "services: $name did not come up"; failed+=("$name"); return 1
}

if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null 2>&1
  wait_for redis redis-cli -h 127.0.0.1 ping
fi

if ! mysqladmin -h 127.0.0.1 -uroot ping >/dev/null 2>&1; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd >/dev/null 2>&1
  wait_for mariadb mysqladmin -h 127.0.0.1 -uroot ping
fi

if ! pg_isready -h 127.0.0.1 -q >/dev/null 2>&1; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start >/dev/null 2>&1
  wait_for postgresql pg_isready -h 127.0.0.1 -q
fi

if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  rabbitmq-server -detached >/dev/null 2>&1
  wait_for rabbitmq bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672'
fi

if command -v dockerd >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
  nohup dockerd --bridge=none --iptables=false >/tmp/boinc-pipeline-dockerd.log 2>&1 &
  wait_for docker docker info || echo "services: dockerd log: $(tail -3 /tmp/boinc-pipeline-dockerd.log)"
fi

# The worker image's build test needs a local Debian base with Python (no registry
# here): made once with debootstrap and kept by the engine.
if docker info >/dev/null 2>&1; then
  sh tests/celery_workers/python_base.sh >/tmp/boinc-pipeline-python-base.log 2>&1 \
    || echo "services: could not build the python base image, see /tmp/boinc-pipeline-python-base.log"
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "services: not running: ${failed[*]}"
  [ "$ci" = true ] && exit 1
fi
exit 0
