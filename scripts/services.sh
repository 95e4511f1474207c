#!/usr/bin/env bash
# Make sure the real servers the test suite talks to are up on loopback: Redis (127.0.0.1:6379)
# and PostgreSQL (127.0.0.1:5432). Starts each one that is down; exits non-zero, naming the
# server, when one cannot be started (the suite must fail, not skip, without its real parts).
set -u

wait_for() {  # name, check command...
  local name=$1; shift
  for _ in $(seq 1 50); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "services: $name did not come up on loopback" >&2
  return 1
}

redis_up() { python3 - <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", 6379), timeout=1)
s.sendall(b"PING\r\n")
sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
PY
}

pg_up() { python3 - <<'PY'
import socket
socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
PY
}

if ! redis_up; then
  if ! command -v redis-server >/dev/null; then
    echo "services: Redis is down and redis-server is not installed (apt-get install redis-server)" >&2
    exit 1
  fi
  echo "services: starting Redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for Redis redis_up || exit 1
fi

if ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "services: PostgreSQL is down and pg_ctlcluster is not installed (apt-get install postgresql)" >&2
    exit 1
  fi
  echo "services: starting PostgreSQL on 127.0.0.1:5432"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
  wait_for PostgreSQL pg_up || exit 1
fi
echo "services: Redis and PostgreSQL are up"
