#!/usr/bin/env bash
# Makes sure the services the tests use answer on loopback: PostgreSQL, Redis,
# RabbitMQ with its Prometheus plugin, MariaDB (started if down, with the machine's own start commands) and that
# Debian's OpenSSH server (the tests start their own sshd) and Chromium (driven by Playwright) are installed.
set -uo pipefail

up() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_for() {  # name port
  for _ in $(seq 1 90); do up "$2" && return 0; sleep 1; done
  echo "services: $1 did not come up on 127.0.0.1:$2" >&2; return 1
}

ensure() {  # name port start-command
  if ! up "$2"; then
    echo "services: $1 is down, starting it" >&2
    bash -c "$3" >/dev/null 2>&1 || true
  fi
  wait_for "$1" "$2"
}

ensure PostgreSQL 5432 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' || exit 1
ensure Redis 6379 'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log' || exit 1
ensure RabbitMQ 5672 'rabbitmq-server -detached' || exit 1
for _ in $(seq 1 60); do rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 1; done
# RabbitMQ's own Prometheus endpoint (:15692), whose queue series the dashboard in deploy/monitoring reads
rabbitmq-plugins -q enable rabbitmq_prometheus >/dev/null || { echo "services: rabbitmq_prometheus" >&2; exit 1; }
wait_for "RabbitMQ's Prometheus plugin" 15692 || exit 1
# the client's MySQL of tests/integration/test_source_mysql.py (each session makes its own database)
ensure MariaDB 3306 'start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd' || exit 1

if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null; then
  echo "services: installing Debian's openssh-server for the SFTP tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq openssh-server >/dev/null) || {
    echo "services: could not install openssh-server" >&2; exit 1; }
fi
if ! command -v chromium >/dev/null; then
  echo "services: installing Debian's chromium for the console's browser tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || {
    echo "services: could not install chromium" >&2; exit 1; }
fi
exit 0
