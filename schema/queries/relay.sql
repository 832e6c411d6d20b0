-- name: RelayBatch :one
-- Moves up to batch_size committed outbox rows into the inbox in one
-- statement, so payloads never travel through Go. The statement locks every
-- free relay partition, claims the oldest outbox rows of those partitions
-- (SKIP LOCKED), deletes them, and inserts one inbox row per matching
-- (subscriber, message), in outbox order so that inbox seq follows publish
-- order. Duplicates of a message ID already pending, dead, or processed within
-- the dedup window are dropped. A send to an undeclared queue becomes a dead
-- letter with last_error 'no-route'. Subscribers that got rows are woken with
-- one NOTIFY each (a hint; consumers also poll).
WITH parts AS (
    SELECT rp.partition
    FROM postbox.relay_partitions rp
    ORDER BY rp.partition
    FOR UPDATE SKIP LOCKED
), claimed AS (
    DELETE FROM postbox.outbox o
    WHERE o.id IN (
        SELECT ob.id
        FROM postbox.outbox ob
        -- An array (an InitPlan, computed once) rather than IN (SELECT ...):
        -- a semi-join makes the planner hash-join and sort the whole outbox
        -- for every batch, where this walks the primary key in id order and
        -- stops after batch_size rows, whatever the backlog.
        WHERE ob.key_hash % 16 = ANY (ARRAY(SELECT p.partition FROM parts p))
        ORDER BY ob.id
        LIMIT @batch_size::integer
        FOR UPDATE SKIP LOCKED)
    RETURNING o.id, o.message_id, o.key_hash, o.is_queue, o.topic, o.type, o.key,
              o.payload, o.headers, o.created_at, o.deliver_at
), routes AS (
    SELECT c.id, c.message_id, sub.name AS subscriber, c.key_hash % sub.partitions AS partition
    FROM claimed c
    JOIN postbox.subscriptions s
      ON NOT c.is_queue
     AND (s.topic_pattern = c.topic OR (s.topic_regex IS NOT NULL AND ('.' || c.topic) ~ s.topic_regex))
     AND (s.filter IS NULL OR postbox.payload_matches(c.payload, s.filter))
    JOIN postbox.subscribers sub ON sub.name = s.subscriber
    UNION ALL
    SELECT c.id, c.message_id, q.name, c.key_hash % q.partitions
    FROM claimed c
    JOIN postbox.subscribers q ON c.is_queue AND q.kind = 'queue' AND q.name = c.topic
), delivered AS (
    INSERT INTO postbox.inbox (subscriber, message_id, partition, topic, type, key,
                               payload, headers, available_at, created_at)
    SELECT r.subscriber, c.message_id, r.partition, c.topic, c.type, c.key,
           c.payload, c.headers, greatest(coalesce(c.deliver_at, now()), now()), c.created_at
    FROM routes r
    JOIN claimed c ON c.id = r.id
    WHERE NOT EXISTS (
        SELECT 1 FROM postbox.processed pr
        WHERE pr.subscriber = r.subscriber AND pr.message_id = r.message_id)
    ORDER BY c.id, r.subscriber
    ON CONFLICT (subscriber, message_id) DO NOTHING
    RETURNING subscriber
), no_route AS (
    INSERT INTO postbox.inbox (subscriber, message_id, partition, status, topic, type, key,
                               payload, headers, created_at, last_error, last_error_at, dead_at)
    -- partition by the default partition count: the queue does not exist yet.
    SELECT c.topic, c.message_id, c.key_hash % 16, 'dead', c.topic, c.type, c.key,
           c.payload,
           coalesce(c.headers, '{}'::jsonb) || jsonb_build_object(
               'x-retry-count', '0',
               'x-original-error', 'no-route',
               'x-moved-to-dlq-at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
           c.created_at, 'no-route', now(), now()
    FROM claimed c
    WHERE c.is_queue AND NOT EXISTS (SELECT 1 FROM routes r WHERE r.id = c.id)
    ORDER BY c.id
    ON CONFLICT (subscriber, message_id) DO NOTHING
    RETURNING 1
), woken AS (
    SELECT count(pg_notify('postbox_inbox', d.subscriber)) AS n
    FROM (SELECT DISTINCT subscriber FROM delivered) d
)
SELECT
    (SELECT count(*) FROM claimed)::integer AS claimed,
    (SELECT count(*) FROM delivered)::integer AS delivered,
    -- routed deliveries dropped because the subscriber already has the
    -- message ID (pending, dead, or handled within the dedup window)
    -- (overlapping subscriptions of one subscriber route a row once)
    ((SELECT count(*) FROM (SELECT DISTINCT r.id, r.subscriber FROM routes r) rr)
      - (SELECT count(*) FROM delivered))::integer AS duplicates,
    (SELECT count(*) FROM no_route)::integer AS no_route,
    (SELECT count(*) FROM claimed c
      WHERE NOT c.is_queue AND NOT EXISTS (SELECT 1 FROM routes r WHERE r.id = c.id))::integer AS unrouted,
    (SELECT n FROM woken)::integer AS woken,
    (SELECT count(*) FROM parts)::integer AS partitions;

-- name: ClaimForSink :many
-- The Sink path: locks the free relay partitions and the oldest due outbox
-- rows in them, for the relay to hand to a Sink and then delete in the same
-- transaction.
WITH parts AS (
    SELECT rp.partition
    FROM postbox.relay_partitions rp
    ORDER BY rp.partition
    FOR UPDATE SKIP LOCKED
)
SELECT ob.id, ob.message_id, ob.key_hash, ob.is_queue, ob.topic, ob.type, ob.key,
       ob.payload, ob.headers, ob.created_at, ob.deliver_at
FROM postbox.outbox ob
    -- An array, not IN (SELECT ...): see RelayBatch.
WHERE ob.key_hash % 16 = ANY (ARRAY(SELECT p.partition FROM parts p))
  AND (ob.deliver_at IS NULL OR ob.deliver_at <= now())
ORDER BY ob.id
LIMIT @batch_size::integer
FOR UPDATE OF ob SKIP LOCKED;

-- name: DeleteOutbox :execrows
DELETE FROM postbox.outbox WHERE id = ANY (@ids::bigint[]);

-- name: RelayNoJIT :exec
-- Turns JIT compilation off for the rest of the relay's transaction. The
-- planner prices RelayBatch by its routing join (claimed rows × an unanalyzed
-- subscriptions table × payload_matches), so a batch of a few thousand rows
-- crosses jit_above_cost and spends most of a second compiling a statement
-- that runs in a fraction of that.
SELECT set_config('jit', 'off', true);
