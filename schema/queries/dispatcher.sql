-- name: DeclareSubscriber :one
-- Creates the subscriber or updates its settings. Returns no row when a
-- subscriber of that name exists with the other kind.
INSERT INTO postbox.subscribers AS s (name, kind, partitions, max_attempts, backoff_initial,
                                      backoff_max, backoff_multiplier, dedup_window, key_on_dead)
VALUES (@name, @kind, @partitions, @max_attempts, @backoff_initial, @backoff_max,
        @backoff_multiplier, @dedup_window, @key_on_dead)
ON CONFLICT (name) DO UPDATE
SET partitions = excluded.partitions,
    max_attempts = excluded.max_attempts,
    backoff_initial = excluded.backoff_initial,
    backoff_max = excluded.backoff_max,
    backoff_multiplier = excluded.backoff_multiplier,
    dedup_window = excluded.dedup_window,
    key_on_dead = excluded.key_on_dead
WHERE s.kind = excluded.kind
RETURNING name;

-- name: EnsureTopicSubscriber :one
-- Creates a topic subscriber with default settings if there is none, and
-- returns the kind of the subscriber of that name.
WITH ins AS (
    INSERT INTO postbox.subscribers (name, kind) VALUES (@name, 'topic')
    ON CONFLICT (name) DO NOTHING
    RETURNING kind
)
SELECT kind FROM ins
UNION ALL
SELECT kind FROM postbox.subscribers WHERE name = @name
LIMIT 1;

-- name: GetSubscriber :one
SELECT * FROM postbox.subscribers WHERE name = @name;

-- name: ListSubscribers :many
SELECT * FROM postbox.subscribers ORDER BY name;

-- name: DeleteSubscriber :execrows
DELETE FROM postbox.subscribers WHERE name = @name;

-- name: UpsertSubscription :exec
INSERT INTO postbox.subscriptions (subscriber, topic_pattern, topic_regex, filter)
VALUES (@subscriber, @topic_pattern, sqlc.narg(topic_regex), sqlc.narg(filter)::jsonpath)
ON CONFLICT (subscriber, topic_pattern) DO UPDATE
SET topic_regex = excluded.topic_regex, filter = excluded.filter;

-- name: DeleteSubscription :execrows
DELETE FROM postbox.subscriptions WHERE subscriber = @subscriber AND topic_pattern = @topic_pattern;

-- name: ListSubscriptions :many
SELECT subscriber, topic_pattern, coalesce(filter::text, '')::text AS filter, created_at
FROM postbox.subscriptions
ORDER BY subscriber, topic_pattern;

-- name: CheckJSONPath :exec
-- Parses a filter without storing it, so a malformed one is rejected before
-- anything is written.
SELECT sqlc.arg(filter)::text::jsonpath;
