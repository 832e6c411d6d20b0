-- name: RouteNameConflicts :one
-- (Routing rules are evaluated by the relay, inside postbox.relay_batch;
-- these statements are package dispatcher's AddRoute, Routes, RemoveRoute
-- and Reroute.)
-- What stands in the way of the rule router -> queue: a subscriber named
-- like the router (its no-route letters would mix with the subscriber's
-- dead letters, and a queue of that name would get the sends as well), a
-- rule that sends to the router (rules do not chain), a router named like
-- the queue, and the kind of the subscriber named like the queue, if any.
SELECT EXISTS (SELECT 1 FROM postbox.subscribers s WHERE s.name = @router::text) AS router_declared,
       EXISTS (SELECT 1 FROM postbox.routes r WHERE r.queue = @router::text) AS router_is_target,
       EXISTS (SELECT 1 FROM postbox.routes r WHERE r.router = @queue::text) AS queue_is_router,
       coalesce((SELECT s.kind FROM postbox.subscribers s WHERE s.name = @queue::text), '')::text AS queue_kind;

-- name: PutRoute :one
-- Adds the rule at position, replacing the one there; a NULL position
-- appends it after the router's last rule and never replaces one (a
-- concurrent append that took the same position makes it return no row,
-- and the caller tries again). The conditions of RouteNameConflicts are
-- checked again in the statement: no row when one of them holds.
INSERT INTO postbox.routes AS r (router, position, queue, type_name, predicate)
SELECT @router::text,
       coalesce(sqlc.narg(position)::integer,
                (SELECT coalesce(max(e.position), 0) + 1 FROM postbox.routes e WHERE e.router = @router::text)),
       @queue::text, sqlc.narg(type_name)::text, sqlc.narg(predicate)::text::jsonpath
WHERE NOT EXISTS (SELECT 1 FROM postbox.subscribers s WHERE s.name = @router::text)
  AND NOT EXISTS (SELECT 1 FROM postbox.subscribers s WHERE s.name = @queue::text AND s.kind <> 'queue')
  AND NOT EXISTS (SELECT 1 FROM postbox.routes e WHERE e.queue = @router::text)
  AND NOT EXISTS (SELECT 1 FROM postbox.routes e WHERE e.router = @queue::text)
ON CONFLICT (router, position) DO UPDATE
SET queue = excluded.queue, type_name = excluded.type_name, predicate = excluded.predicate, created_at = now()
WHERE sqlc.narg(position)::integer IS NOT NULL
RETURNING r.position, r.created_at;

-- name: ListRoutes :many
-- Every rule, or a router's (router NULL: all), in evaluation order.
SELECT router, position, queue, coalesce(type_name, '')::text AS type_name,
       coalesce(predicate::text, '')::text AS predicate, created_at
FROM postbox.routes
WHERE sqlc.narg(router)::text IS NULL OR router = sqlc.narg(router)::text
ORDER BY router, position;

-- name: DeleteRoute :execrows
DELETE FROM postbox.routes WHERE router = @router AND position = @position;

-- name: IsRouter :one
-- Whether name has routing rules.
SELECT EXISTS (SELECT 1 FROM postbox.routes WHERE router = @name::text);

-- name: RerouteDeadLetters :one
-- Sends a router's no-route dead letters (those with one of message_ids,
-- or all when it is NULL) through the router again: each goes back into
-- the outbox as the point-to-point send it was, so the relay evaluates the
-- rules anew, and is recorded in postbox.replays and stamped with
-- x-replayed-at and x-replay-count, as replay_dead_letters does. The keys'
-- producer locks are taken before the outbox ids are drawn (the lock CTE
-- is an InitPlan of the DELETE), so per key the resent messages keep the
-- order of outbox.Publish. Returns how many.
WITH sel AS MATERIALIZED (
    SELECT d.subscriber, d.message_id, d.key_hash, d.key
    FROM postbox.dead_letters d
    WHERE d.subscriber = @router::text AND d.last_error = 'no-route'
      AND (sqlc.narg(message_ids)::uuid[] IS NULL OR d.message_id = ANY (sqlc.narg(message_ids)::uuid[]))
    ORDER BY d.seq
    FOR UPDATE OF d
), locked AS MATERIALIZED (
    SELECT count(pg_advisory_xact_lock(1886352245, k.key_hash)) AS n
    FROM (SELECT DISTINCT s.key_hash FROM sel s WHERE s.key IS NOT NULL ORDER BY 1) k
), taken AS (
    DELETE FROM postbox.dead_letters d
    USING sel
    WHERE d.subscriber = sel.subscriber AND d.message_id = sel.message_id
      AND (SELECT l.n FROM locked l) >= 0
    RETURNING d.*
), requeued AS (
    INSERT INTO postbox.outbox (message_id, key_hash, is_queue, topic, type, key, payload, headers, created_at)
    SELECT t.message_id, t.key_hash, true, t.topic, t.type, t.key, t.payload,
           coalesce(t.headers, '{}'::jsonb) || jsonb_build_object(
               'x-replayed-at', postbox.utc_text(now()),
               'x-replay-count', (t.replay_count + 1)::text),
           t.created_at
    FROM taken t
    ORDER BY t.seq
    RETURNING 1
), logged AS (
    INSERT INTO postbox.replays (subscriber, message_id, attempts, last_error)
    SELECT t.subscriber, t.message_id, t.attempts, t.last_error FROM taken t
    RETURNING 1
)
-- (logged runs to completion unread, as every data-modifying CTE does.)
SELECT count(*)::integer FROM requeued;
