-- name: LockAggregate :one
-- Creates the aggregate if it is new (with its deadline, timeout_ms after
-- now, when timeout_ms > 0) and locks its row for the transaction either
-- way: the no-op update makes a concurrent part of the same key wait here,
-- and read it as that part's transaction left it.
INSERT INTO postbox.aggregates AS a (aggregator, key, deadline)
VALUES (sqlc.arg(aggregator)::text, sqlc.arg(key)::text,
        CASE WHEN sqlc.arg(timeout_ms)::bigint > 0 THEN now() + sqlc.arg(timeout_ms)::bigint * interval '1 millisecond' END)
ON CONFLICT (aggregator, key) DO UPDATE SET aggregator = excluded.aggregator
RETURNING a.expected, a.parts, a.deadline, a.created_at, a.completed_at;

-- name: AddPart :one
-- Stores a part of a locked, open aggregate unless a part with its ID is
-- stored already, and returns the aggregate's count of distinct parts and
-- whether this one was new.
WITH ins AS (
    INSERT INTO postbox.aggregate_parts (aggregator, key, part_id, message_id, topic, type, message_key,
                                         payload, headers, created_at)
    VALUES (sqlc.arg(aggregator)::text, sqlc.arg(key)::text, sqlc.arg(part_id)::text, sqlc.arg(message_id), sqlc.arg(topic)::text, sqlc.arg(type)::text,
            sqlc.narg(message_key)::text, sqlc.arg(payload)::bytea, sqlc.narg(headers)::jsonb, sqlc.arg(created_at))
    ON CONFLICT (aggregator, key, part_id) DO NOTHING
    RETURNING 1
)
UPDATE postbox.aggregates a
SET parts = a.parts + (SELECT count(*) FROM ins)
WHERE a.aggregator = sqlc.arg(aggregator)::text AND a.key = sqlc.arg(key)::text
RETURNING a.parts, (SELECT count(*) FROM ins) > 0 AS added;

-- name: CountLatePart :exec
UPDATE postbox.aggregates SET late_parts = late_parts + 1
WHERE aggregator = sqlc.arg(aggregator)::text AND key = sqlc.arg(key)::text;

-- name: ListParts :many
-- The parts of an aggregate, in part ID order: the aggregate does not
-- depend on the order they arrived in.
SELECT part_id, message_id, topic, type, message_key, payload, headers, created_at, received_at
FROM postbox.aggregate_parts
WHERE aggregator = sqlc.arg(aggregator)::text AND key = sqlc.arg(key)::text
ORDER BY part_id;

-- name: CompleteAggregate :exec
-- Marks a locked aggregate completed and lets its parts go.
WITH done AS (
    UPDATE postbox.aggregates a
    SET completed_at = now(), timed_out = sqlc.arg(timed_out)::boolean, result_id = sqlc.narg(result_id)
    WHERE a.aggregator = sqlc.arg(aggregator)::text AND a.key = sqlc.arg(key)::text AND a.completed_at IS NULL
    RETURNING a.aggregator, a.key
)
DELETE FROM postbox.aggregate_parts p
USING done
WHERE p.aggregator = done.aggregator AND p.key = done.key;

-- name: OpenAggregate :one
-- Creates an aggregate before its first part; no row when the key exists.
INSERT INTO postbox.aggregates (aggregator, key, expected, deadline)
VALUES (sqlc.arg(aggregator)::text, sqlc.arg(key)::text, sqlc.narg(expected)::integer, sqlc.narg(deadline))
ON CONFLICT (aggregator, key) DO NOTHING
RETURNING created_at;

-- name: DueAggregates :many
-- Open aggregates past their deadline, earliest first, locked; those a
-- part's transaction holds are skipped (it may complete them itself).
SELECT aggregator, key, expected, parts, deadline, created_at
FROM postbox.aggregates
WHERE aggregator = sqlc.arg(aggregator)::text AND completed_at IS NULL AND deadline <= now()
ORDER BY deadline
LIMIT sqlc.arg(max_rows)::integer
FOR UPDATE SKIP LOCKED;

-- name: PruneAggregates :execrows
-- Forgets up to max_rows aggregates completed before the retention.
DELETE FROM postbox.aggregates a
USING (SELECT e.aggregator, e.key FROM postbox.aggregates e
       WHERE e.aggregator = sqlc.arg(aggregator)::text AND e.completed_at < now() - sqlc.arg(retention_ms)::bigint * interval '1 millisecond'
       ORDER BY e.completed_at
       LIMIT sqlc.arg(max_rows)::integer) old
WHERE a.aggregator = old.aggregator AND a.key = old.key;

-- name: GetAggregate :one
SELECT aggregator, key, expected, parts, late_parts, deadline, created_at, completed_at, timed_out, result_id
FROM postbox.aggregates
WHERE aggregator = sqlc.arg(aggregator)::text AND key = sqlc.arg(key)::text;
