-- name: ClaimBatch :many
-- The fast path of a claim: looks at the scan_limit oldest available pending
-- deliveries of one subscriber, in age order, and locks up to batch_size of
-- them that may be handled now. A keyed delivery qualifies only when no
-- earlier pending delivery of its key exists (per-key order); rows locked by
-- other consumers are skipped. The scan limit bounds the cost when many of
-- the oldest rows wait behind their key's head (a few hot keys): then the
-- consumer fills the batch with WalkKeyHeads and ClaimByIDs.
-- Claiming writes nothing: attempts are counted only on failure, and a
-- handled row is deleted.
SELECT i.message_id, i.seq, i.partition, i.attempts, i.topic, i.type, i.key,
       i.payload, i.headers, i.created_at, i.available_at
FROM (SELECT c.message_id, c.key, c.seq
      FROM postbox.inbox c
      WHERE c.subscriber = @subscriber
        AND c.status = 'pending'
        AND c.available_at <= now()
      ORDER BY c.available_at, c.seq
      LIMIT @scan_limit::integer) cand
JOIN postbox.inbox i ON i.subscriber = @subscriber AND i.message_id = cand.message_id
-- Checked again on the row itself: a consumer may have recorded a failure
-- (and a backoff) after this statement's snapshot, and the lock re-checks
-- only conditions on i.
WHERE i.status = 'pending'
  AND i.available_at <= now()
  AND (cand.key IS NULL OR NOT EXISTS (
        SELECT 1 FROM postbox.inbox e
        WHERE e.subscriber = @subscriber
          AND e.status = 'pending'
          AND e.key = cand.key
          AND e.seq < cand.seq))
-- No ORDER BY: candidates stream in age order through the nested loop, so
-- the scan stops as soon as batch_size rows are locked.
LIMIT @batch_size::integer
FOR UPDATE OF i SKIP LOCKED;

-- name: ClaimKeyless :many
-- The oldest available deliveries without a key, which need no order check:
-- claimed on their own so that rows waiting behind a blocked key's head can
-- never hide them from the fast path's window.
SELECT i.message_id, i.seq, i.partition, i.attempts, i.topic, i.type, i.key,
       i.payload, i.headers, i.created_at, i.available_at
FROM postbox.inbox i
WHERE i.subscriber = @subscriber
  AND i.status = 'pending'
  AND i.key IS NULL
  AND i.available_at <= now()
  -- rows this transaction already claimed: SKIP LOCKED does not skip them
  AND i.message_id <> ALL (@held::uuid[])
ORDER BY i.available_at, i.seq
LIMIT @batch_size::integer
FOR UPDATE OF i SKIP LOCKED;

-- name: WalkKeyHeads :many
-- The head (earliest pending delivery) of each key after after_key, in key
-- order, at most visit_limit of them: see postbox.walk_key_heads.
SELECT key::text AS key, message_id::uuid AS message_id, available::boolean AS available
FROM postbox.walk_key_heads(@subscriber::text, @after_key::text, @visit_limit::integer);

-- name: ClaimByIDs :many
-- Locks the given deliveries (key heads found by WalkKeyHeads) that are still
-- pending and available, skipping rows other consumers hold.
SELECT i.message_id, i.seq, i.partition, i.attempts, i.topic, i.type, i.key,
       i.payload, i.headers, i.created_at, i.available_at
FROM postbox.inbox i
WHERE i.subscriber = @subscriber
  AND i.message_id = ANY (@message_ids::uuid[])
  AND i.status = 'pending'
  AND i.available_at <= now()
ORDER BY i.available_at, i.seq
LIMIT @batch_size::integer
FOR UPDATE OF i SKIP LOCKED;

-- name: ProcessedAmong :many
-- Which of the claimed message IDs were handled within the dedup window:
-- duplicates that raced the relay's check. Run after the claim, in its
-- transaction; see postbox.processed_among.
SELECT message_id::uuid AS message_id
FROM postbox.processed_among(@subscriber::text, @message_ids::uuid[]) AS message_id;

-- name: CompleteDeliveries :exec
-- Marks deliveries handled: removes them from the inbox and remembers their
-- IDs for the dedup window. Runs in the batch transaction, so it commits
-- together with the handlers' effects.
WITH done AS (
    DELETE FROM postbox.inbox d
    WHERE d.subscriber = @subscriber AND d.message_id = ANY (@message_ids::uuid[])
    RETURNING d.subscriber AS done_subscriber, d.message_id AS done_message_id
)
INSERT INTO postbox.processed (subscriber, message_id)
SELECT done_subscriber, done_message_id FROM done
ON CONFLICT (subscriber, message_id) DO NOTHING;

-- name: FailDeliveries :execrows
-- Records failed attempts: attempts, error, and either the next attempt
-- time or, when dead, the dead-letter headers. Times are this statement's,
-- not now() (the start of the batch transaction): the batch's handlers ran
-- in between, and a backoff counted from before them would be cut short by
-- however long they took.
UPDATE postbox.inbox i
SET attempts = f.attempts,
    last_error = f.error,
    last_error_at = statement_timestamp(),
    available_at = CASE WHEN f.dead THEN i.available_at
                        ELSE statement_timestamp() + f.delay_ms * interval '1 millisecond' END,
    status = CASE WHEN f.dead THEN 'dead' ELSE 'pending' END,
    dead_at = CASE WHEN f.dead THEN statement_timestamp() END,
    headers = CASE WHEN f.dead THEN coalesce(i.headers, '{}'::jsonb) || jsonb_build_object(
                  'x-retry-count', f.attempts::text,
                  'x-original-error', f.error,
                  'x-moved-to-dlq-at', to_char(statement_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
              ELSE i.headers END
FROM (SELECT unnest(@message_ids::uuid[]) AS message_id,
             unnest(@attempts::integer[]) AS attempts,
             unnest(@errors::text[]) AS error,
             unnest(@delays_ms::bigint[]) AS delay_ms,
             unnest(@dead::boolean[]) AS dead) f
WHERE i.subscriber = @subscriber AND i.message_id = f.message_id AND i.status = 'pending'
  -- an attempt already counted (by a retry of this statement) is not counted again
  AND i.attempts < f.attempts;

-- name: MarkProcessed :execrows
-- Claims a message ID for a subscriber before handling it (HandleOnce). The
-- unique key makes check-and-mark one step: a concurrent claim of the same
-- ID waits for this transaction and then finds the row.
INSERT INTO postbox.processed (subscriber, message_id)
VALUES (@subscriber, @message_id)
ON CONFLICT (subscriber, message_id) DO NOTHING;

-- name: PurgeProcessed :execrows
-- Forgets handled message IDs older than their subscriber's dedup window,
-- at most batch_size of them. Subscribers that no longer exist, or never
-- were declared (HandleOnce), use the default window of 7 days. The second
-- condition is the shortest window of all, a constant bound the BRIN index
-- on processed_at can use; it must include that default window, or IDs of
-- undeclared subscribers would be kept as long as the shortest declared one.
DELETE FROM postbox.processed p
WHERE (p.subscriber, p.message_id) IN (
    SELECT pp.subscriber, pp.message_id
    FROM postbox.processed pp
    LEFT JOIN postbox.subscribers s ON s.name = pp.subscriber
    WHERE pp.processed_at < now() - coalesce(s.retention, interval '7 days')
      AND pp.processed_at < now() - least((SELECT min(retention) FROM postbox.subscribers),
                                          interval '7 days')
    LIMIT @batch_size::integer);

-- name: TryJanitorLock :one
-- Only one janitor works at a time; the lock ends with the transaction.
SELECT pg_try_advisory_xact_lock(7306640421744685166) AS locked;
