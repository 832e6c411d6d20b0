-- What `postbox doctor` reads. Each statement is bounded: catalog views,
-- the statistics collector, or a LIMIT.

-- name: DoctorLongTransactions :many
-- Transactions open longer than age_seconds that hold the xmin horizon back:
-- one with a transaction ID anywhere on the cluster (every snapshot taken
-- meanwhile treats it as running, so vacuum keeps what it might see), or
-- one with a snapshot in this database. Other roles' sessions show only to
-- members of pg_read_all_stats (pg_monitor).
SELECT a.pid::integer AS pid,
       coalesce(a.application_name, '')::text AS application_name,
       coalesce(a.usename::text, '')::text AS user_name,
       coalesce(a.datname::text, '')::text AS database,
       coalesce(a.state, '')::text AS state,
       extract(epoch FROM now() - a.xact_start)::float8 AS age_seconds,
       (a.backend_xid IS NOT NULL)::boolean AS has_xid,
       left(coalesce(a.query, ''), 300)::text AS query
FROM pg_catalog.pg_stat_activity a
WHERE a.xact_start < now() - make_interval(secs => @age_seconds::float8)
  AND a.pid <> pg_backend_pid()
  AND (a.backend_xid IS NOT NULL OR (a.backend_xmin IS NOT NULL AND a.datname = current_database()))
ORDER BY a.xact_start
LIMIT 20;

-- name: DoctorPreparedTransactions :many
-- Prepared transactions older than age_seconds: they hold the horizon like
-- an open transaction, and survive restarts.
SELECT p.gid::text AS gid, coalesce(p.owner::text, '')::text AS owner, coalesce(p.database::text, '')::text AS database,
       extract(epoch FROM now() - p.prepared)::float8 AS age_seconds
FROM pg_catalog.pg_prepared_xacts p
WHERE p.prepared < now() - make_interval(secs => @age_seconds::float8)
ORDER BY p.prepared
LIMIT 20;

-- name: DoctorCanReadAllStats :one
-- Whether this role sees other roles' sessions in pg_stat_activity.
SELECT pg_has_role('pg_read_all_stats', 'USAGE')::boolean AS can;

-- name: DoctorTables :many
-- The postbox tables' dead tuples, size, estimated live bytes (live rows
-- times the average row width from pg_stats; 0 when never analyzed) and the
-- age of their last vacuum (-1: never), from the statistics collector.
SELECT s.relname::text AS table_name,
       s.n_live_tup::bigint AS live,
       s.n_dead_tup::bigint AS dead,
       pg_relation_size(s.relid)::bigint AS bytes,
       (s.n_live_tup * coalesce((SELECT 24 + sum(st.avg_width) FROM pg_catalog.pg_stats st
                                 WHERE st.schemaname = s.schemaname AND st.tablename = s.relname
                                   AND NOT st.inherited), 0))::float8 AS live_bytes,
       coalesce(extract(epoch FROM now() - greatest(s.last_vacuum, s.last_autovacuum)), -1)::float8
           AS vacuum_age_seconds,
       (s.last_autovacuum IS NOT NULL AND s.last_autovacuum >= coalesce(s.last_vacuum, s.last_autovacuum))::boolean
           AS last_was_auto
FROM pg_catalog.pg_stat_user_tables s
WHERE s.schemaname = 'postbox'
ORDER BY s.relname;

-- name: DoctorAutovacuumOff :many
-- Postbox tables whose autovacuum is turned off by a storage parameter.
SELECT c.relname::text AS table_name
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'postbox'
  AND EXISTS (SELECT 1 FROM unnest(c.reloptions) o
              WHERE o ~* '^(toast\.)?autovacuum_enabled=(f|fa|fal|fals|false|of|off|n|no|0)$')
ORDER BY 1;

-- name: DoctorSettings :many
-- The server settings the checks compare with, as the server reports them
-- (setting in its unit) for this session.
SELECT s.name::text AS name, s.setting::text AS setting, coalesce(s.unit, '')::text AS unit
FROM pg_catalog.pg_settings s
WHERE s.name IN ('autovacuum', 'track_counts', 'idle_in_transaction_session_timeout', 'transaction_timeout');

-- name: DoctorRoleSettings :many
-- Per-role and per-database defaults that apply in this database
-- (ALTER ROLE/DATABASE ... SET), for the timeouts: a consumer's role may
-- get one the doctor's own session does not.
SELECT coalesce(r.rolname::text, '')::text AS role_name,
       (d.setdatabase <> 0)::boolean AS in_database,
       split_part(cfg, '=', 1)::text AS name,
       substr(cfg, length(split_part(cfg, '=', 1)) + 2)::text AS value
FROM pg_catalog.pg_db_role_setting d
CROSS JOIN LATERAL unnest(d.setconfig) AS cfg
LEFT JOIN pg_catalog.pg_roles r ON r.oid = d.setrole
WHERE d.setdatabase IN (0, (SELECT db.oid FROM pg_catalog.pg_database db WHERE db.datname = current_database()))
  AND split_part(cfg, '=', 1) IN ('idle_in_transaction_session_timeout', 'transaction_timeout');

-- name: DoctorReplicationSlots :many
-- Replication slots that keep more than max_bytes of WAL, or hold the xmin
-- horizon back (a physical slot with hot_standby_feedback, a logical
-- slot's catalog_xmin) while inactive.
SELECT s.slot_name::text AS slot_name,
       coalesce(s.slot_type, '')::text AS slot_type,
       s.active::boolean AS active,
       coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                     ELSE pg_current_wal_lsn() END, s.restart_lsn), 0)::bigint AS retained_bytes,
       (s.xmin IS NOT NULL OR s.catalog_xmin IS NOT NULL)::boolean AS holds_xmin
FROM pg_catalog.pg_replication_slots s
WHERE coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                    ELSE pg_current_wal_lsn() END, s.restart_lsn), 0) > @max_bytes::bigint
   OR (NOT s.active AND (s.xmin IS NOT NULL OR s.catalog_xmin IS NOT NULL))
ORDER BY 4 DESC;

-- name: DoctorDroppedTopics :many
-- Topics of the oldest 1000 outbox messages that no subscription's pattern
-- matches (filters aside): the relay will drop them (relay.Stats.Dropped).
SELECT o.topic::text AS topic, count(*)::bigint AS messages
FROM (SELECT ob.topic, ob.is_queue FROM postbox.outbox ob ORDER BY ob.id LIMIT 1000) o
WHERE NOT o.is_queue
  AND NOT EXISTS (SELECT 1 FROM postbox.subscriptions s
                  WHERE s.topic_pattern = o.topic
                     OR (s.topic_regex IS NOT NULL AND ('.' || o.topic) ~ s.topic_regex))
GROUP BY o.topic
ORDER BY 2 DESC, 1
LIMIT 10;

-- name: DoctorRelaySessions :one
-- Sessions of this database that name themselves postbox-relay (the
-- binary's application_name).
SELECT count(*)::bigint AS n
FROM pg_catalog.pg_stat_activity a
WHERE a.datname = current_database() AND a.application_name = 'postbox-relay';
