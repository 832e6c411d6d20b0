-- name: ListDeadLetters :many
-- Dead letters matching the filter, oldest dead first; a NULL argument means
-- "any" (subscriber NULL: every subscriber). The selection is
-- postbox.select_dead_letters, the same that purge uses.
SELECT d.subscriber, d.message_id, d.topic, d.type, d.key, d.attempts, d.replay_count,
       d.last_error, d.created_at, d.dead_at, d.headers, d.payload
FROM postbox.select_dead_letters(
    sqlc.narg(subscriber)::text,
    sqlc.narg(message_ids)::uuid[],
    sqlc.narg(error_like)::text,
    sqlc.narg(type_name)::text,
    sqlc.narg(dead_since)::timestamptz,
    sqlc.narg(dead_until)::timestamptz,
    @max_rows::integer) d;

-- name: CountDeadLetters :one
-- How many dead letters postbox.purge_dead_letters would delete with the
-- same arguments (a dry run).
SELECT count(*)::integer AS n
FROM postbox.select_dead_letters(
    @subscriber::text,
    sqlc.narg(message_ids)::uuid[],
    sqlc.narg(error_like)::text,
    sqlc.narg(type_name)::text,
    sqlc.narg(dead_since)::timestamptz,
    sqlc.narg(dead_until)::timestamptz,
    @max_rows::integer);

-- name: CountReplayable :one
-- How many dead letters postbox.replay_dead_letters would replay with the
-- same arguments (a dry run): letters held back behind an earlier dead
-- letter of their key are not counted.
SELECT count(*)::integer AS n
FROM postbox.replayable_dead_letters(
    @subscriber::text,
    sqlc.narg(message_ids)::uuid[],
    sqlc.narg(error_like)::text,
    sqlc.narg(type_name)::text,
    sqlc.narg(dead_since)::timestamptz,
    sqlc.narg(dead_until)::timestamptz,
    @max_rows::integer);

-- name: GetDeadLetter :one
-- One dead letter; no row when it is missing.
SELECT d.subscriber, d.message_id, d.topic, d.type, d.key, d.attempts, d.replay_count,
       d.last_error, d.created_at, d.dead_at, d.headers, d.payload
FROM postbox.dead_letters d
WHERE d.subscriber = @subscriber AND d.message_id = @message_id;

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
