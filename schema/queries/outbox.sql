-- name: OutboxBacklog :one
-- How many messages wait for the relay (up to cap: counting every row of a
-- large backlog would make this cost what the backlog costs), and the age
-- of the oldest.
SELECT (SELECT count(*) FROM (SELECT 1 FROM postbox.outbox LIMIT @cap::integer) c)::bigint AS waiting,
       coalesce(extract(epoch FROM now() - (SELECT o.created_at FROM postbox.outbox o ORDER BY o.id LIMIT 1)),
                0)::double precision AS oldest_seconds;

-- name: NotifyRelay :exec
-- Wakes LISTENing relays (relay.Config.Listen) when the transaction commits.
SELECT pg_notify('postbox_outbox', '');

-- name: LockKeys :exec
-- Per-key publish order: the producer's transaction takes a lock on each
-- key's hash (sorted, so producers cannot deadlock) before it draws outbox
-- ids, and keeps it to commit. So two transactions publishing one key
-- commit in the order of their ids.
SELECT count(pg_advisory_xact_lock(1886352245, h))
FROM (SELECT DISTINCT unnest(@key_hashes::integer[]) AS h ORDER BY 1) k;
