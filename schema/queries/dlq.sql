-- name: ListDeadLetters :many
-- Dead letters matching the filter, oldest dead first; a NULL argument means
-- "any" (subscriber NULL: every subscriber). The predicate is the one of
-- postbox.replay_dead_letters and postbox.purge_dead_letters: keep them in
-- step (the dlq tests compare CountDeadLetters with what they touch).
SELECT d.subscriber, d.message_id, d.topic, d.type, d.key, d.attempts, d.replay_count,
       d.last_error, d.created_at, d.dead_at, d.headers, d.payload
FROM postbox.inbox d
WHERE d.status = 'dead'
  AND (sqlc.narg(subscriber)::text IS NULL OR d.subscriber = sqlc.narg(subscriber)::text)
  AND (sqlc.narg(message_ids)::uuid[] IS NULL OR d.message_id = ANY (sqlc.narg(message_ids)::uuid[]))
  AND (sqlc.narg(error_like)::text IS NULL OR d.last_error LIKE sqlc.narg(error_like)::text)
  AND (sqlc.narg(type_name)::text IS NULL OR d.type = sqlc.narg(type_name)::text)
  AND (sqlc.narg(dead_since)::timestamptz IS NULL OR d.dead_at >= sqlc.narg(dead_since)::timestamptz)
  AND (sqlc.narg(dead_until)::timestamptz IS NULL OR d.dead_at < sqlc.narg(dead_until)::timestamptz)
ORDER BY d.dead_at, d.subscriber, d.message_id
LIMIT @max_rows::integer;

-- name: CountDeadLetters :one
-- How many dead letters postbox.replay_dead_letters or
-- postbox.purge_dead_letters would touch with the same arguments (dry run).
SELECT count(*)::integer AS n
FROM (
    SELECT 1
    FROM postbox.inbox d
    WHERE d.status = 'dead'
      AND d.subscriber = @subscriber::text
      AND (sqlc.narg(message_ids)::uuid[] IS NULL OR d.message_id = ANY (sqlc.narg(message_ids)::uuid[]))
      AND (sqlc.narg(error_like)::text IS NULL OR d.last_error LIKE sqlc.narg(error_like)::text)
      AND (sqlc.narg(type_name)::text IS NULL OR d.type = sqlc.narg(type_name)::text)
      AND (sqlc.narg(dead_since)::timestamptz IS NULL OR d.dead_at >= sqlc.narg(dead_since)::timestamptz)
      AND (sqlc.narg(dead_until)::timestamptz IS NULL OR d.dead_at < sqlc.narg(dead_until)::timestamptz)
    LIMIT @max_rows::integer
) selected;

-- name: GetDeadLetter :one
-- One dead letter; no row when it is missing or not dead.
SELECT d.subscriber, d.message_id, d.topic, d.type, d.key, d.attempts, d.replay_count,
       d.last_error, d.created_at, d.dead_at, d.headers, d.payload
FROM postbox.inbox d
WHERE d.status = 'dead' AND d.subscriber = @subscriber AND d.message_id = @message_id;

-- name: ReplayDeadLetters :one
-- Go replays through the SQL function, so Go, the binary and psql share one
-- implementation.
SELECT postbox.replay_dead_letters(
    @subscriber::text,
    sqlc.narg(message_ids)::uuid[],
    sqlc.narg(error_like)::text,
    sqlc.narg(type_name)::text,
    sqlc.narg(dead_since)::timestamptz,
    sqlc.narg(dead_until)::timestamptz,
    @max_rows::integer)::integer AS replayed;

-- name: PurgeDeadLetters :one
-- Go purges through the SQL function, as for replay.
SELECT postbox.purge_dead_letters(
    @subscriber::text,
    sqlc.narg(message_ids)::uuid[],
    sqlc.narg(error_like)::text,
    sqlc.narg(type_name)::text,
    sqlc.narg(dead_since)::timestamptz,
    sqlc.narg(dead_until)::timestamptz,
    @max_rows::integer)::integer AS purged;
