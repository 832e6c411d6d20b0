-- name: QueueDepths :many
-- Per subscriber: deliveries ready now, waiting (delayed, in backoff or
-- blocked behind their key), dead letters, and the age in seconds of the
-- oldest pending delivery (0 when none). Declared subscribers come from
-- postbox.queue_depths; names that are not declared but have parked
-- deliveries or dead letters (no-route sends to a missing queue, rows left
-- by a dropped subscriber, the relay's '_relay' quarantine) are listed too,
-- with kind 'undeclared', so nothing is invisible to operators. Exact, so
-- it reads every pending delivery: for `postbox stats`, not for scrapes.
SELECT q.subscriber::text AS subscriber,
       q.kind::text AS kind,
       q.ready::bigint AS ready,
       q.waiting::bigint AS waiting,
       q.dead::bigint AS dead,
       coalesce(extract(epoch FROM now() - q.oldest_pending), 0)::double precision AS oldest_pending_seconds
FROM postbox.queue_depths q
UNION ALL
SELECT u.subscriber::text,
       'undeclared'::text,
       (SELECT count(*) FROM postbox.parked k WHERE k.subscriber = u.subscriber AND k.available_at <= now())::bigint,
       (SELECT count(*) FROM postbox.parked k WHERE k.subscriber = u.subscriber AND k.available_at > now())::bigint,
       (SELECT count(*) FROM postbox.dead_letters d WHERE d.subscriber = u.subscriber)::bigint,
       coalesce(extract(epoch FROM now() - (SELECT min(k.enqueued_at) FROM postbox.parked k
                                            WHERE k.subscriber = u.subscriber)), 0)::double precision
FROM (SELECT DISTINCT x.subscriber FROM (SELECT k.subscriber FROM postbox.parked k
                                         UNION SELECT d.subscriber FROM postbox.dead_letters d) x
      WHERE NOT EXISTS (SELECT 1 FROM postbox.subscribers s WHERE s.name = x.subscriber)) u
ORDER BY 1;

-- name: DatabaseNow :one
-- The database's clock, so time filters given relative to "now" (--since 24h)
-- agree with the timestamps the database wrote.
SELECT now()::timestamptz AS now;
