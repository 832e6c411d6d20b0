-- name: RelayBatch :one
-- Moves one batch from the outbox into the inbox stream; see
-- postbox.relay_batch. One statement, its own transaction.
SELECT r.claimed::integer AS claimed, r.candidates::integer AS candidates, r.min_id::bigint AS min_id,
       r.max_id::bigint AS max_id,
       r.bytes::bigint AS bytes, r.delivered::integer AS delivered, r.duplicates::integer AS duplicates,
       r.no_route::integer AS no_route, r.dropped::integer AS dropped,
       r.parts::smallint[] AS parts, r.subscribers::text[] AS subscribers,
       r.traceparents::text[] AS traceparents
FROM postbox.relay_batch(@batch_size::integer, @max_bytes::bigint, @marks::bigint[],
                         sqlc.narg(only_id)::bigint) r;

-- name: ProbeLockTimeout :exec
-- For the transaction probing one row alone: waiting for a lock ends at
-- half the statement timeout (55P03, which is retried) rather than at the
-- timeout itself (57014), so a row is never blamed for a lock someone else
-- holds (a migration's DDL).
SELECT set_config('lock_timeout',
                  CASE WHEN t.ms > 0 THEN greatest(t.ms / 2, 1)::bigint::text ELSE '1000' END, true)
FROM (SELECT extract(epoch FROM current_setting('statement_timeout')::interval) * 1000 AS ms) t;

-- name: RelayPeek :one
-- The oldest row RelayBatch would take now; see postbox.relay_peek.
SELECT postbox.relay_peek(@marks::bigint[])::bigint AS id;

-- name: QuarantineOutbox :one
-- Moves an outbox row the relay statement fails on to the '_relay' dead
-- letters; see postbox.quarantine_outbox.
SELECT postbox.quarantine_outbox(@id::bigint, @error::text)::boolean AS moved;

-- name: OutboxHorizon :one
-- Whether the given outbox writers still run, the id sequence's position,
-- and the writers now; see postbox.outbox_horizon.
SELECT h.writing::boolean AS writing, h.last_id::bigint AS last_id, h.writers::text[] AS writers
FROM postbox.outbox_horizon(@writers::text[]) h;

-- name: RotateSlots :one
-- Truncates the outbox and stream slots nothing needs; see postbox.rotate_slots.
SELECT postbox.rotate_slots()::integer AS emptied;

-- name: NotifySubscribers :exec
-- Wakes the consumers of these subscribers. Sent after the batch that gave
-- them deliveries committed, in a transaction of its own: a notification
-- is a hint, and a full notification queue must not fail the data path.
SELECT count(pg_notify('postbox_inbox', s)) FROM unnest(@subscribers::text[]) AS s;

-- name: TryLockRelayPartition :one
-- The Sink path holds a relay partition with a session lock while a sink
-- delivers, so no transaction stays open across network I/O.
SELECT pg_try_advisory_lock(1886352244, @part::integer) AS locked;

-- name: UnlockRelayPartition :one
SELECT pg_advisory_unlock(1886352244, @part::integer) AS unlocked;

-- name: DeleteOutbox :execrows
-- Deletes delivered rows by (slot, id), so each is one probe of its slot.
DELETE FROM postbox.outbox o
USING (SELECT unnest(@slots::smallint[]) AS slot, unnest(@ids::bigint[]) AS id) d
WHERE o.slot = d.slot AND o.id = d.id;

-- name: SinkClaim :many
-- The Sink path's claim: see postbox.sink_claim.
SELECT * FROM postbox.sink_claim(@part::integer, @after_id::bigint, @batch_size::integer);

-- name: ReleaseScheduled :one
-- Puts scheduled messages that are due back into the outbox; see
-- postbox.release_scheduled.
SELECT postbox.release_scheduled(@batch_size::integer)::integer AS released;
