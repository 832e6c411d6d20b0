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
-- or all when it is NULL) through the router again: replay_dead_letters
-- puts no-route letters back into the outbox as the sends they were, so
-- the relay evaluates the rules anew.
SELECT postbox.replay_dead_letters(@router::text, sqlc.narg(message_ids)::uuid[], 'no-route')::integer;
