-- name: QueueDepths :many
-- Per subscriber: deliveries ready now, waiting (in backoff or delayed), dead
-- letters, and the age in seconds of the oldest pending delivery (0 when
-- none). Declared subscribers come from postbox.queue_depths; inbox rows of
-- names that are not declared (no-route sends to a missing queue, rows left by
-- a dropped subscriber) are counted too, with kind 'undeclared', so nothing in
-- the inbox is invisible to operators. Both parts scan the inbox rows of
-- every subscriber: the binary calls this per `postbox stats` and per
-- /metrics scrape, with a timeout.
SELECT q.subscriber::text AS subscriber,
       q.kind::text AS kind,
       q.ready::bigint AS ready,
       q.waiting::bigint AS waiting,
       q.dead::bigint AS dead,
       coalesce(extract(epoch FROM now() - q.oldest_pending), 0)::double precision AS oldest_pending_seconds
FROM postbox.queue_depths q
UNION ALL
SELECT i.subscriber::text,
       'undeclared'::text,
       (count(*) FILTER (WHERE i.status = 'pending' AND i.available_at <= now()))::bigint,
       (count(*) FILTER (WHERE i.status = 'pending' AND i.available_at > now()))::bigint,
       (count(*) FILTER (WHERE i.status = 'dead'))::bigint,
       coalesce(extract(epoch FROM now() - min(i.enqueued_at) FILTER (WHERE i.status = 'pending')), 0)::double precision
FROM postbox.inbox i
WHERE NOT EXISTS (SELECT 1 FROM postbox.subscribers s WHERE s.name = i.subscriber)
GROUP BY i.subscriber
ORDER BY 1;

-- name: DatabaseNow :one
-- The database's clock, so time filters given relative to "now" (--since 24h)
-- agree with the timestamps the database wrote.
SELECT now()::timestamptz AS now;
