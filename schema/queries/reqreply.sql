-- name: TryLockReplyQueue :one
-- A Requester holds this session lock on its reply queue for as long as it
-- runs; a sweeper that can take it knows the queue's requester is gone
-- (its session ended: stopped or crashed). The class 1886352246 is the
-- relay's (1886352244) and the producer key lock's (1886352245) neighbour.
SELECT pg_try_advisory_lock(1886352246, hashtext(@queue::text));

-- name: UnlockReplyQueue :one
SELECT pg_advisory_unlock(1886352246, hashtext(@queue::text));

-- name: ReplyQueues :many
-- The declared reply queues whose names start with prefix.
SELECT name FROM postbox.subscribers
WHERE kind = 'queue' AND starts_with(name, @prefix::text)
ORDER BY name;

-- name: ReplyQueuePending :one
-- Deliveries of the queue not yet handled nor dead (0 for a queue that is
-- not declared).
SELECT coalesce((SELECT d.ready + d.waiting FROM postbox.queue_depths d WHERE d.subscriber = @queue::text), 0)::bigint;
