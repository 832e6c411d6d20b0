-- name: InsertOutbox :exec
INSERT INTO postbox.outbox (message_id, key_hash, is_queue, topic, type, key, payload, headers, deliver_at)
VALUES (@message_id, @key_hash, @is_queue, @topic, @type, sqlc.narg(key), @payload, sqlc.narg(headers), sqlc.narg(deliver_at));

-- name: CopyOutbox :copyfrom
INSERT INTO postbox.outbox (message_id, key_hash, is_queue, topic, type, key, payload, headers, deliver_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: OutboxBacklog :one
-- How many messages wait for the relay, and the age of the oldest.
SELECT count(*)::bigint AS waiting,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::double precision AS oldest_seconds
FROM postbox.outbox;

-- name: NotifyRelay :exec
-- Wakes LISTENing relays (relay.Config.Listen) when the transaction commits.
SELECT pg_notify('postbox_outbox', '');
