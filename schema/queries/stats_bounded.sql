-- Statistics in bounded time, whatever the backlog (package stats). Every
-- statement here reads a bounded number of index entries and rows: exact
-- counts stop at a cap (LIMIT inside), lag comes from the first rows past
-- each cursor, and sizes beyond the cap are estimated (by extrapolation over
-- seq ranges, by the planner's statistics, or by sequence arithmetic). None
-- of them reads a whole table, so a scrape of a 10M-row backlog costs what a
-- scrape of an empty one costs. Package stats runs them in a read-only
-- transaction with seqscan and bitmapscan off (except StatsHandled, which
-- wants the BRIN index), so statistics-less tables cannot turn a probe into
-- a scan.

-- name: StatsNames :many
-- Every declared subscriber, and up to max_names names that are not
-- declared but have parked deliveries or dead letters (no-route sends to a
-- missing queue, what a dropped subscriber left, the relay's '_relay'
-- quarantine), found by skip scans: one index descent per distinct name.
WITH RECURSIVE dead_names AS (
    (SELECT d.subscriber FROM postbox.dead_letters d ORDER BY d.subscriber LIMIT 1)
    UNION ALL
    SELECT n.subscriber
    FROM dead_names w
    CROSS JOIN LATERAL (SELECT d.subscriber FROM postbox.dead_letters d
                        WHERE d.subscriber > w.subscriber
                        ORDER BY d.subscriber LIMIT 1) n
), parked_names AS (
    (SELECT k.subscriber FROM postbox.parked k ORDER BY k.subscriber LIMIT 1)
    UNION ALL
    SELECT n.subscriber
    FROM parked_names w
    CROSS JOIN LATERAL (SELECT k.subscriber FROM postbox.parked k
                        WHERE k.subscriber > w.subscriber
                        ORDER BY k.subscriber LIMIT 1) n
), found AS (
    (SELECT dn.subscriber FROM dead_names dn LIMIT @max_names::integer)
    UNION
    (SELECT pn.subscriber FROM parked_names pn LIMIT @max_names::integer)
)
SELECT s.name::text AS name, s.kind::text AS kind, s.key_on_dead::text AS key_on_dead
FROM postbox.subscribers s
UNION ALL
SELECT f.subscriber::text, 'undeclared'::text, 'proceed'::text
FROM found f
WHERE NOT EXISTS (SELECT 1 FROM postbox.subscribers s WHERE s.name = f.subscriber)
ORDER BY 1;

-- name: StatsStream :many
-- Per cursor (declared subscriber and order partition): the first per_part
-- stream rows past the cursor, counted (n), of which delayed (available_at
-- still ahead), with the lowest and highest seq among them and the oldest
-- enqueued_at (the partition's lag: per partition, seq order is the relay's
-- commit order); and the partition's last seq. Fewer than per_part rows
-- means n is exact; otherwise the backlog is extrapolated from the density
-- of the sample over [first_seq, tail_seq]. subscriber NULL: every one.
SELECT c.subscriber::text AS subscriber,
       c.part::smallint AS part,
       s.n::bigint AS n,
       s.delayed::bigint AS delayed,
       coalesce(s.first_seq, 0)::bigint AS first_seq,
       coalesce(s.last_seq, 0)::bigint AS last_seq,
       (s.oldest IS NOT NULL)::boolean AS has_oldest,
       coalesce(s.oldest, now())::timestamptz AS oldest,
       coalesce(t.seq, 0)::bigint AS tail_seq
FROM postbox.inbox_cursors c
CROSS JOIN LATERAL (
    SELECT count(*) AS n,
           count(*) FILTER (WHERE x.available_at > now()) AS delayed,
           min(x.seq) AS first_seq,
           max(x.seq) AS last_seq,
           min(x.enqueued_at) AS oldest
    FROM (SELECT r.seq, r.available_at, r.enqueued_at
          FROM postbox.inbox r
          WHERE r.subscriber = c.subscriber AND r.part = c.part AND r.seq >= c.next_seq
          ORDER BY r.seq
          LIMIT @per_part::integer) x
) s
LEFT JOIN LATERAL (
    -- only for a full sample (a one-time filter: no probe otherwise)
    SELECT r.seq
    FROM postbox.inbox r
    WHERE s.n >= @per_part::integer
      AND r.subscriber = c.subscriber AND r.part = c.part AND r.seq >= c.next_seq
    ORDER BY r.seq DESC
    LIMIT 1
) t ON true
WHERE sqlc.narg(subscriber)::text IS NULL OR c.subscriber = sqlc.narg(subscriber)::text
ORDER BY c.subscriber, c.part;

-- name: StatsParked :many
-- Per name, up to cap parked deliveries, by state: ready (due now),
-- blocked (behind their key's head: available_at infinity), in backoff
-- (waiting for a retry), delayed (waiting for DeliverAt or a replay's turn),
-- and the oldest enqueued_at among them.
SELECT u.name::text AS subscriber,
       p.n::bigint AS n,
       p.ready::bigint AS ready,
       p.backoff::bigint AS backoff,
       p.blocked::bigint AS blocked,
       (p.oldest IS NOT NULL)::boolean AS has_oldest,
       coalesce(p.oldest, now())::timestamptz AS oldest
FROM unnest(@names::text[]) AS u(name)
CROSS JOIN LATERAL (
    SELECT count(*) AS n,
           count(*) FILTER (WHERE k.available_at <= now()) AS ready,
           count(*) FILTER (WHERE k.available_at > now() AND k.available_at <> 'infinity'
                              AND k.reason = 'retry') AS backoff,
           count(*) FILTER (WHERE k.available_at = 'infinity') AS blocked,
           min(k.enqueued_at) AS oldest
    FROM (SELECT b.available_at, b.reason, b.enqueued_at
          FROM postbox.parked b
          WHERE b.subscriber = u.name
          LIMIT @cap::integer) k
) p;

-- name: StatsDead :many
-- Per name, its dead letters, counted up to cap.
SELECT u.name::text AS subscriber,
       (SELECT count(*) FROM (SELECT 1 FROM postbox.dead_letters d
                              WHERE d.subscriber = u.name LIMIT @cap::integer) x)::bigint AS n
FROM unnest(@names::text[]) AS u(name);

-- name: StatsFrequencies :many
-- The planner's statistics for the subscriber column of parked and
-- dead_letters: the table's estimated rows, and the most common names with
-- their frequencies. Package stats estimates a count the cap cut short as
-- the planner would: reltuples times the name's frequency.
SELECT c.relname::text AS table_name,
       c.reltuples::float8 AS reltuples,
       coalesce(s.null_frac, 0)::float8 AS null_frac,
       coalesce(s.n_distinct, 0)::float8 AS n_distinct,
       coalesce(s.most_common_vals::text::text[], '{}')::text[] AS names,
       coalesce(s.most_common_freqs, '{}')::float8[] AS freqs
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_stats s
       ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = 'subscriber'
      AND NOT s.inherited
WHERE n.nspname = 'postbox' AND c.relname IN ('parked', 'dead_letters');

-- name: StatsHandled :many
-- Handled deliveries per subscriber since now - window_seconds, from the dedup
-- table (postbox.processed), reading at most cap rows through its BRIN
-- index on processed_at: rows arrive in processed_at order, so the scan
-- covers the window's block range, not the table. scanned is the total
-- read (cap reached: the counts are lower bounds).
SELECT x.subscriber::text AS subscriber,
       count(*)::bigint AS handled,
       (sum(count(*)) OVER ())::bigint AS scanned
FROM (SELECT p.subscriber
      FROM postbox.processed p
      WHERE p.processed_at >= now() - make_interval(secs => @window_seconds::float8)
      LIMIT @cap::integer) x
GROUP BY x.subscriber
ORDER BY 1;

-- name: StatsOutbox :one
-- The outbox backlog: up to cap rows in id order (the relay's order),
-- counted, of which due (deliver_at unset or past); the oldest row's id and
-- created_at; the oldest due row's due time; the sequence's position (so a
-- backlog beyond cap is estimated as last_id - oldest_id + 1, an upper
-- bound: ids of rolled-back inserts count too); and the Sink path's
-- scheduled messages, counted up to cap.
SELECT o.n::bigint AS n,
       o.due::bigint AS due,
       coalesce(o.oldest_id, 0)::bigint AS oldest_id,
       (o.oldest IS NOT NULL)::boolean AS has_oldest,
       coalesce(o.oldest, now())::timestamptz AS oldest,
       (o.oldest_due IS NOT NULL)::boolean AS has_oldest_due,
       coalesce(o.oldest_due, now())::timestamptz AS oldest_due,
       coalesce(pg_sequence_last_value('postbox.outbox_seq'::regclass), 0)::bigint AS last_id,
       (SELECT count(*) FROM (SELECT 1 FROM postbox.scheduled sc LIMIT @cap::integer) z)::bigint AS scheduled
FROM (
    SELECT count(*) AS n,
           count(*) FILTER (WHERE w.deliver_at IS NULL OR w.deliver_at <= now()) AS due,
           min(w.id) AS oldest_id,
           (array_agg(w.created_at ORDER BY w.id))[1] AS oldest,
           min(greatest(w.created_at, w.deliver_at))
               FILTER (WHERE w.deliver_at IS NULL OR w.deliver_at <= now()) AS oldest_due
    FROM (SELECT ob.id, ob.created_at, ob.deliver_at
          FROM postbox.outbox ob
          ORDER BY ob.id
          LIMIT @cap::integer) w
) o;

-- name: StatsBlockedKeys :many
-- A subscriber's keys whose head is failing: the key's earliest parked
-- delivery has failed attempts (in backoff), or (with key_on_dead 'park')
-- the key waits behind a dead letter. Keys are walked by a skip scan of
-- parked_key_idx, visiting at most visit keys; parked counts the key's
-- parked deliveries (its head included) up to 1001. Most recently failing
-- first.
WITH RECURSIVE walk AS (
    (SELECT k.key FROM postbox.parked k
     WHERE k.subscriber = @subscriber::text AND k.key IS NOT NULL
     ORDER BY k.key LIMIT 1)
    UNION ALL
    SELECT n.key
    FROM walk w
    CROSS JOIN LATERAL (SELECT k.key FROM postbox.parked k
                        WHERE k.subscriber = @subscriber::text AND k.key > w.key
                        ORDER BY k.key LIMIT 1) n
), visited AS (
    SELECT wk.key FROM walk wk LIMIT @visit::integer
)
SELECT ky.key::text AS key,
       h.message_id::uuid AS message_id,
       h.attempts::integer AS attempts,
       h.reason::text AS reason,
       (h.available_at <> 'infinity')::boolean AS has_next_attempt,
       CASE WHEN h.available_at <> 'infinity' THEN h.available_at ELSE now() END::timestamptz AS next_attempt_at,
       coalesce(h.last_error, d.last_error, '')::text AS last_error,
       (coalesce(h.last_error_at, d.last_error_at) IS NOT NULL)::boolean AS has_last_error_at,
       coalesce(h.last_error_at, d.last_error_at, now())::timestamptz AS last_error_at,
       (d.message_id IS NOT NULL)::boolean AS behind_dead_letter,
       b.n::bigint AS parked
FROM visited ky
CROSS JOIN LATERAL (
    SELECT k.message_id, k.attempts, k.reason, k.available_at, k.last_error, k.last_error_at
    FROM postbox.parked k
    WHERE k.subscriber = @subscriber::text AND k.key = ky.key
    ORDER BY k.seq
    LIMIT 1
) h
LEFT JOIN LATERAL (
    -- a head that never failed yet waits forever: behind a dead letter
    SELECT dl.message_id, dl.last_error, dl.last_error_at
    FROM postbox.dead_letters dl
    WHERE h.attempts = 0 AND h.available_at = 'infinity'
      AND dl.subscriber = @subscriber::text AND dl.key = ky.key
    ORDER BY dl.seq
    LIMIT 1
) d ON true
CROSS JOIN LATERAL (
    SELECT count(*) AS n
    FROM (SELECT 1 FROM postbox.parked k
          WHERE k.subscriber = @subscriber::text AND k.key = ky.key LIMIT 1001) x
) b
WHERE h.attempts > 0 OR d.message_id IS NOT NULL
ORDER BY coalesce(h.last_error_at, d.last_error_at) DESC NULLS LAST, ky.key
LIMIT @max_keys::integer;

-- name: StatsPlanner :exec
-- The settings of the transaction package stats reads in: only the index
-- paths the statements above are written for (a queue table's statistics
-- are never right for long: a truncated slot has none), and a
-- statement_timeout (milliseconds; NULL: unchanged) for the one statement whose
-- cost vacuum can let grow (StatsHandled).
SELECT set_config('enable_seqscan', @seqscan::text, true),
       set_config('enable_bitmapscan', @bitmapscan::text, true),
       set_config('statement_timeout',
                  coalesce(sqlc.narg(statement_timeout)::text, current_setting('statement_timeout')), true),
       set_config('jit', 'off', true);
