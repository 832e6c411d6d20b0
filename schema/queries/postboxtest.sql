-- name: OutboxRowsAfter :many
-- postboxtest (the public test helpers) reads the outbox, which has no
-- public reader, through the test's own transaction, so that it sees what
-- the transaction wrote before it commits: here the rows of ids above
-- @after, in id order (per key, publish order), as a producer wrote them.
SELECT o.id, o.message_id, o.is_queue, o.topic, o.type, coalesce(o.key, '')::text AS key,
       o.payload, o.headers, o.created_at, o.deliver_at
FROM postbox.outbox o
WHERE o.id > @after::bigint
ORDER BY o.id;

-- name: OutboxLastID :one
-- The highest outbox id, 0 for an empty outbox: postboxtest.Handle reads
-- what the handler published after it.
SELECT coalesce(max(o.id), 0)::bigint AS last_id FROM postbox.outbox o;
