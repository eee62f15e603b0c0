#!/usr/bin/env bash
# Makes sure PostgreSQL, RabbitMQ and Redis answer on their local ports, starting any that do not
# (with the commands of the machine notes in ARCHITECTURE.md). Fails with a clear message otherwise.
set -u

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name port seconds
  for _ in $(seq 1 "$3"); do up "$2" && return 0; sleep 1; done
  echo "infra: $1 is not answering on 127.0.0.1:$2" >&2
  return 1
}

if ! up 5432; then
  echo "infra: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if ! up 6379; then
  echo "infra: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
if ! up 5672; then
  echo "infra: starting RabbitMQ"
  rabbitmq-server -detached || true
fi

status=0
wait_for PostgreSQL 5432 60 || status=1

# A test session keeps dozens of apps and processes alive, each with its pool, relay listener and loops: on a
# 2-worker run more than PostgreSQL's default 100 connections. A local cluster is given room (once: it persists).
if [ "$status" -eq 0 ] && command -v pg_ctlcluster >/dev/null && [ -z "${POSTGRES_URL:-}" ]; then
  max=$(psql -h 127.0.0.1 -U postgres -Atc "SHOW max_connections" 2>/dev/null || echo 0)
  if [ "${max:-0}" -lt "${TEST_PG_MAX_CONNECTIONS:-400}" ]; then
    echo "infra: raising PostgreSQL max_connections from $max to ${TEST_PG_MAX_CONNECTIONS:-400} (restart)"
    psql -h 127.0.0.1 -U postgres -qc "ALTER SYSTEM SET max_connections = ${TEST_PG_MAX_CONNECTIONS:-400}" &&
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main restart &&
      wait_for PostgreSQL 5432 60 || status=1
  fi
fi
wait_for Redis 6379 30 || status=1
wait_for RabbitMQ 5672 120 || status=1
if [ "$status" -ne 0 ]; then
  echo "infra: start the missing service(s) above, or set POSTGRES_URL / AMQP_URL / REDIS_URL" >&2
fi
exit $status
