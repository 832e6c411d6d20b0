-- name: ClaimBatch :many
-- Up to batch_size deliveries that may be handled now, from order
-- partitions no other consumer works, which stay locked for this session;
-- see postbox.claim_batch. Runs outside any transaction and only reads: an
-- empty claim writes nothing.
SELECT c.source::text AS source, c.part::smallint AS part, c.next_seq::bigint AS next_seq,
       c.epoch::bigint AS epoch, c.seq::bigint AS seq, c.message_id::uuid AS message_id,
       c.key_hash::integer AS key_hash, c.attempts::integer AS attempts,
       c.replay_count::integer AS replay_count, c.topic::text AS topic, c.type::text AS type,
       coalesce(c.key, '')::text AS key, c.payload::bytea AS payload, c.headers::jsonb AS headers,
       c.created_at::timestamptz AS created_at, c.available_at::timestamptz AS available_at,
       c.enqueued_at::timestamptz AS enqueued_at,
       c.blocked::boolean AS blocked, c.handled::boolean AS handled
FROM postbox.claim_batch(@subscriber::text, @batch_size::integer, @start::integer,
                         @skip::smallint[], @park_on_dead::boolean) c;

-- name: OwnPartitions :one
-- In the batch transaction: the claimed partitions this batch may work,
-- locked until it ends, the claim's session locks let go; see
-- postbox.own_partitions.
SELECT postbox.own_partitions(@subscriber::text, @parts::smallint[], @epochs::bigint[], @release::boolean)::smallint[] AS parts;

-- name: FinishBatch :exec
-- In the batch transaction, after the handlers: records the outcome; see
-- postbox.finish_batch.
SELECT postbox.finish_batch(
    @subscriber::text,
    @parts::smallint[], @next_seqs::bigint[], @epochs::bigint[],
    @done::uuid[], @unpark::uuid[],
    @park_ids::uuid[], @park_parts::smallint[], @park_seqs::bigint[], @park_reasons::text[],
    @park_attempts::integer[], @park_delays_ms::bigint[], @park_errors::text[],
    @retry_ids::uuid[], @retry_attempts::integer[], @retry_delays_ms::bigint[], @retry_errors::text[],
    @dead_ids::uuid[], @dead_parked::boolean[], @dead_parts::smallint[], @dead_seqs::bigint[],
    @dead_attempts::integer[], @dead_errors::text[],
    @park_on_dead::boolean, @run::integer);

-- name: ProcessedAmong :many
-- Which of the given message IDs the subscriber handled within its dedup
-- window. The consumer asks after a batch hit a second copy of a handled
-- message (finish_batch's unique_violation); see postbox.processed_among.
SELECT message_id::uuid AS message_id
FROM postbox.processed_among(@subscriber::text, @message_ids::uuid[]) AS message_id;

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
-- were declared (HandleOnce), use postbox.default_dedup_window(). The second
-- condition is the shortest window of all, a constant bound the BRIN index
-- on processed_at can use; it must include that default window, or IDs of
-- undeclared subscribers would be kept as long as the shortest declared one.
DELETE FROM postbox.processed p
WHERE (p.subscriber, p.message_id) IN (
    SELECT pp.subscriber, pp.message_id
    FROM postbox.processed pp
    LEFT JOIN postbox.subscribers s ON s.name = pp.subscriber
    WHERE pp.processed_at < now() - coalesce(s.dedup_window, postbox.default_dedup_window())
      AND pp.processed_at < now() - least((SELECT min(dedup_window) FROM postbox.subscribers),
                                          postbox.default_dedup_window())
    LIMIT @batch_size::integer);

-- name: TryJanitorLock :one
-- Only one janitor works at a time; the lock ends with the transaction.
SELECT pg_try_advisory_xact_lock(7306640421744685166) AS locked;
