-- +goose Up
-- postbox 2: queue tables that a long transaction cannot slow down, an idle
-- relay that writes nothing, and consumers that take whole runs of a key.
-- docs/architecture.md has the measurements behind every choice here.
--
-- What changes:
--   * postbox.outbox is partitioned into 8 time slots (10 s each, in a ring).
--     A slot the relay has emptied is TRUNCATEd, which frees its space at
--     once even while a long transaction holds the xmin horizon.
--   * postbox.inbox becomes an append-only stream of deliveries, partitioned
--     into 8 slots by seq. Consumers never update or delete stream rows: each
--     (subscriber, order partition) has a cursor in postbox.inbox_cursors, a
--     claim reads forward from it, and handling a delivery moves the cursor.
--     Nothing a claim reads is ever a dead tuple, however long vacuum is held
--     back; a slot every cursor has passed is TRUNCATEd.
--   * Deliveries that must wait (in backoff, delayed, blocked behind their
--     key's failing head, replayed) move to postbox.parked; dead letters move
--     to their own table postbox.dead_letters (it replaces the view).
--   * Relay partitions are transaction-level advisory locks instead of row
--     locks on postbox.relay_partitions, so an empty relay poll writes nothing.

-- Named constants, used by every statement below and by the Go code (which
-- names the same values in internal/sqlconst). A plain SQL function of a
-- constant is inlined by the planner, so using them costs nothing.
-- +goose StatementBegin
CREATE FUNCTION postbox.order_partitions() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 16 $$;
-- +goose StatementEnd
COMMENT ON FUNCTION postbox.order_partitions() IS
    'Relay and order partitions: a message belongs to partition key_hash % 16. One relay at a time moves a partition, so per partition inbox seq order is commit order.';

-- "Dedup window" everywhere: the column migration 1 called retention.
ALTER TABLE postbox.subscribers RENAME COLUMN retention TO dedup_window;

-- +goose StatementBegin
CREATE FUNCTION postbox.default_dedup_window() RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT interval '7 days' $$;
-- +goose StatementEnd
COMMENT ON FUNCTION postbox.default_dedup_window() IS
    'The dedup window of subscribers that were never declared (HandleOnce).';

-- +goose StatementBegin
CREATE FUNCTION postbox.utc_text(ts timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION postbox.utc_text(timestamptz) IS
    'The timestamp format of the x-moved-to-dlq-at and x-replayed-at headers (RFC 3339, UTC, microseconds).';

-- The outbox slot a producer writes now: 8 slots of 10 seconds in a ring.
-- Producers in Go compute the same from their own clock and insert into the
-- slot's table directly (no partition routing on the hot path); a clock that
-- is off only picks another slot, which is always safe: a slot is truncated
-- only when it is empty, checked under an exclusive lock.
-- +goose StatementBegin
CREATE FUNCTION postbox.outbox_slot() RETURNS smallint
LANGUAGE sql VOLATILE AS $$
    SELECT (floor(extract(epoch FROM clock_timestamp()) / 10)::bigint % 8)::smallint
$$;
-- +goose StatementEnd

-- Kafka's murmur2 (Utils.murmur2 with its seed), sign bit cleared: the
-- key_hash of a message, as outbox.Publish computes it in Go, for SQL that
-- writes outbox rows by hand: postbox.key_hash(convert_to(key, 'UTF8')), or
-- uuid_send(message_id) for a message without a key. 32-bit products are
-- split in two so that bigint arithmetic never overflows.
-- +goose StatementBegin
CREATE FUNCTION postbox.key_hash(data bytea) RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT AS $$
DECLARE
    m  constant bigint := 1540483477; -- 0x5bd1e995
    u  constant bigint := 4294967295; -- 2^32 - 1
    n  constant integer := length(data);
    h  bigint := (2538058380 # n) & u; -- seed 0x9747b28c
    k  bigint;
    i  integer := 0;
    t  integer;
BEGIN
    WHILE i + 4 <= n LOOP
        k := get_byte(data, i)::bigint | (get_byte(data, i + 1)::bigint << 8)
           | (get_byte(data, i + 2)::bigint << 16) | (get_byte(data, i + 3)::bigint << 24);
        k := ((k * (m & 65535)) + (((k * (m >> 16)) & 65535) << 16)) & u;
        k := k # (k >> 24);
        k := ((k * (m & 65535)) + (((k * (m >> 16)) & 65535) << 16)) & u;
        h := ((h * (m & 65535)) + (((h * (m >> 16)) & 65535) << 16)) & u;
        h := h # k;
        i := i + 4;
    END LOOP;
    t := n & 3;
    IF t = 3 THEN h := h # (get_byte(data, i + 2)::bigint << 16); END IF;
    IF t >= 2 THEN h := h # (get_byte(data, i + 1)::bigint << 8); END IF;
    IF t >= 1 THEN
        h := h # get_byte(data, i)::bigint;
        h := ((h * (m & 65535)) + (((h * (m >> 16)) & 65535) << 16)) & u;
    END IF;
    h := h # (h >> 13);
    h := ((h * (m & 65535)) + (((h * (m >> 16)) & 65535) << 16)) & u;
    h := h # (h >> 15);
    RETURN (h & 2147483647)::integer;
END
$$;
-- +goose StatementEnd

-- Advisory lock keys. Relay partition p is the lock (1886352244, p); order
-- partition p of a subscriber is (postbox.inbox_lock_key(subscriber), p).
-- +goose StatementBegin
CREATE FUNCTION postbox.inbox_lock_key(subscriber text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT hashtext('postbox.inbox:' || subscriber) $$;
-- +goose StatementEnd

-- Takes the order partitions' locks of a subscriber for the transaction,
-- in partition order, waiting for the consumer batches that hold them.
-- Whatever writes parked deliveries outside a consumer's batch (replay,
-- purge's release) takes them first, in a statement of its own, so that its
-- next statement's snapshot sees every batch of those partitions committed
-- and no claim runs between its reads and its writes.
-- +goose StatementBegin
CREATE FUNCTION postbox.lock_order_partitions(subscriber text, parts smallint[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(postbox.inbox_lock_key(lock_order_partitions.subscriber), p.part)
    FROM (SELECT DISTINCT u.part::integer AS part FROM unnest(lock_order_partitions.parts) AS u(part) ORDER BY 1) p;
END
$$;
-- +goose StatementEnd

------------------------------------------------------------------------------
-- The outbox.
ALTER TABLE postbox.outbox RENAME TO outbox_v1;
ALTER TABLE postbox.outbox_v1 RENAME CONSTRAINT outbox_pkey TO outbox_v1_pkey;
ALTER TABLE postbox.outbox_v1 RENAME CONSTRAINT outbox_key_hash TO outbox_v1_key_hash;

CREATE SEQUENCE postbox.outbox_seq AS bigint;

CREATE TABLE postbox.outbox (
    -- drawn by the INSERT; with outbox.Publish's key lock, ids of one key
    -- follow the commit order of the transactions that publish them.
    id         bigint      NOT NULL DEFAULT nextval('postbox.outbox_seq'),
    slot       smallint    NOT NULL DEFAULT postbox.outbox_slot(),
    message_id uuid        NOT NULL,
    -- murmur2(key) & 0x7fffffff (Kafka's partitioner); of the message ID
    -- when there is no key, so keyless messages spread over partitions.
    key_hash   integer     NOT NULL,
    -- true for a point-to-point send to the queue named by topic.
    is_queue   boolean     NOT NULL DEFAULT false,
    topic      text        NOT NULL,
    type       text        NOT NULL DEFAULT '',
    key        text,
    payload    bytea       NOT NULL,
    headers    jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    deliver_at timestamptz,
    -- The limits the Go producer enforces that the relay and consumers rely
    -- on, so a bad hand-written row fails at its INSERT rather than later.
    CONSTRAINT outbox_key_hash CHECK (key_hash >= 0),
    CONSTRAINT outbox_topic CHECK (length(topic) BETWEEN 1 AND 200
        AND topic ~ '^[a-z0-9][a-z0-9_-]*(\.[a-z0-9_-]+)*$'),
    CONSTRAINT outbox_type CHECK (octet_length(type) <= 200),
    -- MaxKeyBytesLimit: keys are indexed with the subscriber name.
    CONSTRAINT outbox_key CHECK (octet_length(key) BETWEEN 1 AND 2048),
    CONSTRAINT outbox_headers CHECK (jsonb_typeof(headers) = 'object'),
    CONSTRAINT outbox_slot CHECK (slot BETWEEN 0 AND 7)
) PARTITION BY LIST (slot);
-- +goose StatementBegin
DO $$
BEGIN
    FOR s IN 0..7 LOOP
        EXECUTE format('CREATE TABLE postbox.outbox_%s PARTITION OF postbox.outbox FOR VALUES IN (%s)', s, s);
        -- Queue tables churn: vacuum them early and often.
        EXECUTE format('ALTER TABLE postbox.outbox_%s SET (autovacuum_vacuum_scale_factor = 0.01,
            autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_insert_scale_factor = 0.05,
            autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0)', s);
    END LOOP;
END
$$;
-- +goose StatementEnd
-- The only index: the relay claims in id order. (Not unique: a unique index
-- on a partitioned table must include the slot; the sequence makes ids unique.)
CREATE INDEX outbox_id_idx ON postbox.outbox (id);

-- Rows that break a limit above could only have been written by hand; they
-- become quarantined dead letters (below) instead of failing the migration.
CREATE TEMPORARY TABLE outbox_v1_bad ON COMMIT DROP AS
SELECT o.* FROM postbox.outbox_v1 o
WHERE NOT (coalesce(length(o.topic) BETWEEN 1 AND 200 AND o.topic ~ '^[a-z0-9][a-z0-9_-]*(\.[a-z0-9_-]+)*$', false)
           AND octet_length(o.type) <= 200
           AND coalesce(octet_length(o.key) BETWEEN 1 AND 2048, true)
           AND coalesce(jsonb_typeof(o.headers) = 'object', true));
INSERT INTO postbox.outbox (id, slot, message_id, key_hash, is_queue, topic, type, key, payload,
                            headers, created_at, deliver_at)
SELECT o.id, postbox.outbox_slot(), o.message_id, o.key_hash, o.is_queue, o.topic, o.type, o.key,
       o.payload, o.headers, o.created_at, o.deliver_at
FROM postbox.outbox_v1 o
WHERE NOT EXISTS (SELECT 1 FROM outbox_v1_bad b WHERE b.id = o.id);
SELECT setval('postbox.outbox_seq',
              greatest((SELECT max(id) FROM postbox.outbox_v1),
                       (SELECT last_value FROM postbox.outbox_id_seq), 1));

------------------------------------------------------------------------------
-- The inbox stream.
ALTER TABLE postbox.inbox RENAME TO inbox_v1;
ALTER TABLE postbox.inbox_v1 RENAME CONSTRAINT inbox_pkey TO inbox_v1_pkey;
ALTER TABLE postbox.inbox_v1 RENAME CONSTRAINT inbox_status TO inbox_v1_status;
ALTER INDEX postbox.inbox_claim_idx RENAME TO inbox_v1_claim_idx;
ALTER INDEX postbox.inbox_keyless_idx RENAME TO inbox_v1_keyless_idx;
ALTER INDEX postbox.inbox_key_idx RENAME TO inbox_v1_key_idx;
ALTER INDEX postbox.inbox_dead_idx RENAME TO inbox_v1_dead_idx;

CREATE SEQUENCE postbox.inbox_seq AS bigint;
SELECT setval('postbox.inbox_seq',
              greatest((SELECT max(seq) FROM postbox.inbox_v1),
                       (SELECT last_value FROM postbox.inbox_seq_seq), 1));

-- One row per (subscriber, message) the relay routed, never updated or
-- deleted: consumers read forward from their cursor. The slot (seq / 65536
-- mod 8) is a partition, emptied with TRUNCATE once every cursor is past it.
CREATE TABLE postbox.inbox (
    subscriber   text        NOT NULL,
    -- key_hash % 16: the order partition; one consumer at a time works it.
    part         smallint    NOT NULL,
    -- per (subscriber, part), seq order is the relay's commit order, which
    -- for one key is publish order.
    seq          bigint      NOT NULL DEFAULT nextval('postbox.inbox_seq'),
    message_id   uuid        NOT NULL,
    key_hash     integer     NOT NULL,
    topic        text        NOT NULL,
    type         text        NOT NULL DEFAULT '',
    key          text,
    payload      bytea       NOT NULL,
    headers      jsonb,
    -- deliver_at for a delayed message, else when the relay moved it.
    available_at timestamptz NOT NULL,
    created_at   timestamptz NOT NULL,
    enqueued_at  timestamptz NOT NULL DEFAULT now()
) PARTITION BY LIST (((seq >> 16) & 7));
-- +goose StatementBegin
DO $$
BEGIN
    FOR s IN 0..7 LOOP
        EXECUTE format('CREATE TABLE postbox.inbox_%s PARTITION OF postbox.inbox FOR VALUES IN (%s)', s, s);
        -- Insert-only: vacuum only sets the visibility map; analyze often.
        EXECUTE format('ALTER TABLE postbox.inbox_%s SET (autovacuum_vacuum_insert_scale_factor = 0.05,
            autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0)', s);
    END LOOP;
END
$$;
-- +goose StatementEnd
-- The one index: a claim reads (subscriber, part) forward from the cursor.
CREATE INDEX inbox_cursor_idx ON postbox.inbox (subscriber, part, seq);

-- Where each consumer group stands in each order partition. Stream rows of
-- (subscriber, part) with seq < next_seq are handled (or parked); epoch
-- counts the batches that finished there, so a batch claimed from a stale
-- position cannot finish.
CREATE TABLE postbox.inbox_cursors (
    subscriber text     NOT NULL,
    part       smallint NOT NULL,
    next_seq   bigint   NOT NULL,
    epoch      bigint   NOT NULL DEFAULT 0,
    CONSTRAINT inbox_cursors_pkey PRIMARY KEY (subscriber, part),
    CONSTRAINT inbox_cursors_subscriber_fkey FOREIGN KEY (subscriber)
        REFERENCES postbox.subscribers (name) ON DELETE CASCADE
) WITH (fillfactor = 20); -- room for HOT updates: one per batch

-- A declared subscriber gets its cursors at once, positioned after every
-- delivery that exists: stream rows left by an earlier subscriber of the
-- same name are never handed to the new one.
-- +goose StatementBegin
CREATE FUNCTION postbox.subscriber_cursors() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO postbox.inbox_cursors (subscriber, part, next_seq)
    SELECT NEW.name, p, nextval('postbox.inbox_seq')
    FROM generate_series(0, postbox.order_partitions() - 1) p
    ON CONFLICT DO NOTHING;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER subscribers_cursors AFTER INSERT ON postbox.subscribers
    FOR EACH ROW EXECUTE FUNCTION postbox.subscriber_cursors();

-- Deliveries that wait: in backoff after a failure (reason 'retry'),
-- delayed by DeliverAt ('delayed'), behind their key's head ('blocked'),
-- or replayed from the dead letters ('replayed'). Per key only the earliest
-- parked delivery may be due; the others wait at available_at = infinity
-- until it is handled, when the next run of them is released.
CREATE TABLE postbox.parked (
    subscriber    text        NOT NULL,
    message_id    uuid        NOT NULL,
    part          smallint    NOT NULL,
    seq           bigint      NOT NULL,
    key_hash      integer     NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    replay_count  integer     NOT NULL DEFAULT 0,
    reason        text        NOT NULL,
    topic         text        NOT NULL,
    type          text        NOT NULL DEFAULT '',
    key           text,
    payload       bytea       NOT NULL,
    headers       jsonb,
    available_at  timestamptz NOT NULL,
    created_at    timestamptz NOT NULL,
    enqueued_at   timestamptz NOT NULL,
    last_error    text,
    last_error_at timestamptz,
    -- the message's own DeliverAt (its stream row's available_at): a
    -- blocked delivery released behind its key's head waits for it still
    deliver_at    timestamptz,
    CONSTRAINT parked_pkey PRIMARY KEY (subscriber, message_id),
    CONSTRAINT parked_reason CHECK (reason IN ('retry', 'delayed', 'blocked', 'replayed'))
);
-- Due deliveries of one order partition, oldest due first.
CREATE INDEX parked_due_idx ON postbox.parked (subscriber, part, available_at, seq);
-- Is a key blocked, and which of its deliveries comes next?
CREATE INDEX parked_key_idx ON postbox.parked (subscriber, key, seq) WHERE key IS NOT NULL;
ALTER TABLE postbox.parked SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 200,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);

-- Dead letters: deliveries that exhausted their attempts or failed
-- permanently, sends to an undeclared queue (last_error 'no-route'), and
-- outbox rows the relay could not move (subscriber '_relay', a name no
-- subscriber can have; replaying them puts them back into the outbox).
DROP VIEW postbox.dead_letters;
CREATE TABLE postbox.dead_letters (
    subscriber    text        NOT NULL,
    message_id    uuid        NOT NULL,
    part          smallint    NOT NULL,
    seq           bigint      NOT NULL,
    key_hash      integer     NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    replay_count  integer     NOT NULL DEFAULT 0,
    -- for '_relay' letters: a point-to-point send, as in the outbox
    is_queue      boolean     NOT NULL DEFAULT false,
    topic         text        NOT NULL,
    type          text        NOT NULL DEFAULT '',
    key           text,
    payload       bytea       NOT NULL,
    headers       jsonb,
    created_at    timestamptz NOT NULL,
    enqueued_at   timestamptz NOT NULL DEFAULT now(),
    last_error    text,
    last_error_at timestamptz,
    dead_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dead_letters_pkey PRIMARY KEY (subscriber, message_id)
);
CREATE INDEX dead_letters_age_idx ON postbox.dead_letters (subscriber, dead_at);
CREATE INDEX dead_letters_key_idx ON postbox.dead_letters (subscriber, key, seq) WHERE key IS NOT NULL;

-- The old inbox's rows: dead ones become dead letters; pending ones that
-- never failed go back into the stream with their seq (delayed and
-- replayed ones too: consumers park what must wait; a replayed one keeps
-- its replay count in its x-replay-count header), and those in backoff,
-- always their key's earliest pending delivery, are parked, as are the
-- pending ones of subscribers no longer declared. Cursors of existing
-- subscribers start at 0, before every migrated row. Each delivery moves
-- exactly once: nothing is lost and nothing doubled.
INSERT INTO postbox.dead_letters (subscriber, message_id, part, seq, key_hash, attempts, replay_count,
    topic, type, key, payload, headers, created_at, enqueued_at, last_error, last_error_at, dead_at)
SELECT i.subscriber, i.message_id, (h.key_hash % 16)::smallint, i.seq, h.key_hash, i.attempts, i.replay_count,
       i.topic, i.type, i.key, i.payload, i.headers, i.created_at, i.enqueued_at, i.last_error,
       i.last_error_at, coalesce(i.dead_at, now())
FROM postbox.inbox_v1 i
CROSS JOIN LATERAL (SELECT postbox.key_hash(coalesce(convert_to(i.key, 'UTF8'), uuid_send(i.message_id))) AS key_hash) h
WHERE i.status = 'dead';
INSERT INTO postbox.dead_letters (subscriber, message_id, part, seq, key_hash, is_queue, topic, type, key,
    payload, headers, created_at, last_error, last_error_at)
SELECT '_relay', b.message_id, (b.key_hash % 16)::smallint, b.id, b.key_hash, b.is_queue, b.topic, b.type, b.key,
       b.payload, b.headers, b.created_at, 'relay: the row breaks a limit of postbox.outbox (migration 2)', now()
FROM outbox_v1_bad b
ON CONFLICT DO NOTHING;
-- The old inbox kept key_hash % partitions, not key_hash: recompute it, so
-- a migrated delivery lands in the same order partition as the new
-- deliveries of its key.
INSERT INTO postbox.inbox (subscriber, part, seq, message_id, key_hash, topic, type, key, payload,
                           headers, available_at, created_at, enqueued_at)
SELECT i.subscriber, (h.key_hash % 16)::smallint, i.seq, i.message_id, h.key_hash, i.topic, i.type, i.key, i.payload,
       i.headers, i.available_at, i.created_at, i.enqueued_at
FROM postbox.inbox_v1 i
CROSS JOIN LATERAL (SELECT postbox.key_hash(coalesce(convert_to(i.key, 'UTF8'), uuid_send(i.message_id))) AS key_hash) h
WHERE i.status = 'pending' AND i.attempts = 0
  AND EXISTS (SELECT 1 FROM postbox.subscribers s WHERE s.name = i.subscriber);
INSERT INTO postbox.parked (subscriber, message_id, part, seq, key_hash, attempts, replay_count, reason,
    topic, type, key, payload, headers, available_at, created_at, enqueued_at, last_error, last_error_at)
SELECT i.subscriber, i.message_id, (h.key_hash % 16)::smallint, i.seq, h.key_hash, i.attempts, i.replay_count,
       CASE WHEN i.attempts > 0 THEN 'retry' ELSE 'replayed' END,
       i.topic, i.type, i.key, i.payload, i.headers,
       -- only a key's earliest parked delivery may be due
       CASE WHEN i.key IS NOT NULL AND EXISTS (
                SELECT 1 FROM postbox.inbox_v1 e
                WHERE e.subscriber = i.subscriber AND e.key = i.key AND e.status = 'pending'
                  AND e.attempts > 0 AND e.seq < i.seq)
            THEN 'infinity'::timestamptz ELSE i.available_at END,
       i.created_at, i.enqueued_at, i.last_error, i.last_error_at
FROM postbox.inbox_v1 i
CROSS JOIN LATERAL (SELECT postbox.key_hash(coalesce(convert_to(i.key, 'UTF8'), uuid_send(i.message_id))) AS key_hash) h
WHERE i.status = 'pending'
  -- in backoff; or left by a subscriber that is no longer declared: the
  -- stream is read only through a declared subscriber's cursors, and a
  -- parked delivery waits, visible, for its subscriber to come back
  AND (i.attempts > 0 OR NOT EXISTS (SELECT 1 FROM postbox.subscribers s WHERE s.name = i.subscriber));
INSERT INTO postbox.inbox_cursors (subscriber, part, next_seq)
SELECT s.name, p, 0 FROM postbox.subscribers s, generate_series(0, 15) p;

DROP VIEW postbox.queue_depths;
DROP FUNCTION postbox.purge_dead_letters(text, uuid[], text, text, timestamptz, timestamptz, integer);
DROP FUNCTION postbox.replay_dead_letters(text, uuid[], text, text, timestamptz, timestamptz, integer);
DROP FUNCTION postbox.select_dead_letters(text, uuid[], text, text, timestamptz, timestamptz, integer);
DROP FUNCTION postbox.walk_key_heads(text, text, integer);
DROP TABLE postbox.inbox_v1;
DROP TABLE postbox.outbox_v1;
DROP TABLE postbox.relay_partitions;

-- What later messages of a key do while one of its messages is a dead
-- letter: 'proceed' (they are handled; the default, as in postbox 1) or
-- 'park' (they wait until the letter is replayed or purged).
ALTER TABLE postbox.subscribers ADD COLUMN key_on_dead text NOT NULL DEFAULT 'proceed';
ALTER TABLE postbox.subscribers ADD CONSTRAINT subscribers_key_on_dead CHECK (key_on_dead IN ('proceed', 'park'));

-- The headers a dead letter carries beside its own.
-- +goose StatementBegin
CREATE FUNCTION postbox.dead_letter_headers(headers jsonb, attempts integer, error text) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(headers, '{}'::jsonb) || jsonb_build_object(
        'x-retry-count', attempts::text,
        'x-original-error', error,
        'x-moved-to-dlq-at', postbox.utc_text(statement_timestamp()))
$$;
-- +goose StatementEnd

-- How often a stream delivery was replayed before (postbox 1 gave a
-- replayed letter a new seq in the inbox, so a migrated one can be in the
-- stream): its x-replay-count header, 0 when absent or not a number.
-- +goose StatementBegin
CREATE FUNCTION postbox.replay_count(headers jsonb) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN headers->>'x-replay-count' ~ '^[0-9]{1,9}$'
                THEN (headers->>'x-replay-count')::integer ELSE 0 END
$$;
-- +goose StatementEnd

------------------------------------------------------------------------------
-- Consuming. A batch is: claim_batch (no transaction: it only reads), then
-- BEGIN; own_partitions; the handlers; finish_batch; COMMIT.

-- Up to batch_size deliveries of one subscriber that may be handled now.
-- Going round the order partitions from partition start, it takes each one
-- no other consumer works with a session-level advisory lock, then reads
-- the partition's due parked deliveries and its stream from the cursor,
-- in seq order, until the batch is full; a partition with nothing to give
-- is let go at once. The caller keeps the locks of the partitions that
-- gave rows until own_partitions turns them into its batch transaction's
-- (so no other consumer claims the same rows meanwhile), and must let them
-- go (or close the connection) if it does not get that far. Rows come with
-- the cursor (next_seq, epoch) they were read at: a batch whose partition
-- moved on meanwhile cannot finish. blocked marks a stream delivery whose
-- key has a parked (or, with key_on_dead 'park', dead) delivery: it must
-- wait behind it; handled marks a second copy of a message the subscriber
-- handled within its dedup window (one primary-key probe per row), which
-- must not reach the handler again.
-- A function for its SET clauses and its loop: the plans must not depend
-- on statistics, which a queue table never has right (a fresh inbox has
-- none, a truncated slot has lost them): only the index paths below exist,
-- and they are planned once per session (generic plans; custom ones cost
-- about a millisecond of planning per call over eight partitions). The
-- probes are scalar subqueries with LIMIT 1, never EXISTS: PostgreSQL may
-- turn an EXISTS into a hashed subplan that reads every handled ID of the
-- subscriber on every claim (31 ms a claim after 25,000 handled, measured).
-- +goose StatementBegin
CREATE FUNCTION postbox.claim_batch(
    p_subscriber   text,
    p_batch_size   integer,
    p_start        integer,
    p_skip         smallint[],
    p_park_on_dead boolean)
RETURNS TABLE (
    source text, part smallint, next_seq bigint, epoch bigint, seq bigint, message_id uuid,
    key_hash integer, attempts integer, replay_count integer, topic text, type text, key text,
    payload bytea, headers jsonb, created_at timestamptz, available_at timestamptz,
    enqueued_at timestamptz, blocked boolean, handled boolean)
LANGUAGE plpgsql
SET jit = off
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
DECLARE
    lock_key   constant integer := postbox.inbox_lock_key(p_subscriber);
    any_parked boolean;
    any_dead   boolean := false;
    parts      constant integer := postbox.order_partitions();
    wanted     integer := p_batch_size;
    got        integer;
    p          smallint;
    c_next     bigint;
    c_epoch    bigint;
    n_stream   integer;
BEGIN
    FOR i IN 0 .. parts - 1 LOOP
        EXIT WHEN wanted <= 0;
        p := ((p_start + i) % parts)::smallint;
        CONTINUE WHEN p = ANY (p_skip) OR NOT pg_try_advisory_lock(lock_key, p);
        SELECT c.next_seq, c.epoch INTO c_next, c_epoch
        FROM postbox.inbox_cursors c WHERE c.subscriber = p_subscriber AND c.part = p;
        IF NOT FOUND THEN
            PERFORM pg_advisory_unlock(lock_key, p);
            CONTINUE;
        END IF;
        got := 0;
        -- Decided under the partition's lock, never before it: a batch that
        -- parked (or dead-lettered) a delivery of this partition has
        -- committed by now, and this statement's snapshot sees it.
        any_parked := EXISTS (SELECT 1 FROM postbox.parked k WHERE k.subscriber = p_subscriber AND k.part = p);
        any_dead := any_dead OR (p_park_on_dead AND EXISTS (
            SELECT 1 FROM postbox.dead_letters d WHERE d.subscriber = p_subscriber AND d.key IS NOT NULL));
        IF any_parked THEN
            RETURN QUERY
            SELECT 'parked'::text, p, c_next, c_epoch, k.seq, k.message_id, k.key_hash, k.attempts,
                   k.replay_count, k.topic, k.type, k.key, k.payload, k.headers, k.created_at,
                   k.available_at, k.enqueued_at, false,
                   (SELECT 1 FROM postbox.processed pr
                    WHERE pr.subscriber = p_subscriber AND pr.message_id = k.message_id LIMIT 1) IS NOT NULL
            FROM postbox.parked k
            WHERE k.subscriber = p_subscriber AND k.part = p AND k.available_at <= now()
              -- only a key's earliest parked delivery may be due: a guard
              AND (k.key IS NULL OR (
                   SELECT 1 FROM postbox.parked e
                   WHERE e.subscriber = p_subscriber AND e.key = k.key AND e.seq < k.seq
                     AND e.available_at > now()
                   LIMIT 1) IS NULL)
            ORDER BY k.available_at, k.seq
            LIMIT wanted;
            GET DIAGNOSTICS got = ROW_COUNT;
        END IF;
        IF wanted - got > 0 THEN
            RETURN QUERY
            SELECT 'stream'::text, p, c_next, c_epoch, r.seq, r.message_id, r.key_hash, 0, 0,
                   r.topic, r.type, r.key, r.payload, r.headers, r.created_at, r.available_at,
                   r.enqueued_at,
                   r.key IS NOT NULL AND (
                       (any_parked AND (SELECT 1 FROM postbox.parked b
                                        WHERE b.subscriber = p_subscriber AND b.key = r.key LIMIT 1) IS NOT NULL)
                    OR (any_dead AND (SELECT 1 FROM postbox.dead_letters d
                                      WHERE d.subscriber = p_subscriber AND d.key = r.key LIMIT 1) IS NOT NULL)),
                   (SELECT 1 FROM postbox.processed pr
                    WHERE pr.subscriber = p_subscriber AND pr.message_id = r.message_id LIMIT 1) IS NOT NULL
            FROM postbox.inbox r
            WHERE r.subscriber = p_subscriber AND r.part = p AND r.seq >= c_next
            ORDER BY r.seq
            LIMIT wanted - got;
            GET DIAGNOSTICS n_stream = ROW_COUNT;
            got := got + n_stream;
        END IF;
        IF got = 0 THEN
            PERFORM pg_advisory_unlock(lock_key, p);
        END IF;
        wanted := wanted - got;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- In the batch transaction: takes the claimed order partitions whose
-- cursor is still at the epoch the claim read, for the transaction, lets
-- go of the claim's session locks on all of them (release: the caller ran
-- claim_batch on this session), and returns the taken ones. The others moved on meanwhile, and their rows must be let go.
-- +goose StatementBegin
CREATE FUNCTION postbox.own_partitions(p_subscriber text, p_parts smallint[], p_epochs bigint[],
                                       p_release boolean)
RETURNS smallint[]
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    lock_key constant integer := postbox.inbox_lock_key(p_subscriber);
    owned    smallint[] := '{}';
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_parts), 0) LOOP
        IF pg_try_advisory_xact_lock(lock_key, p_parts[i]) AND EXISTS (
               SELECT 1 FROM postbox.inbox_cursors c
               WHERE c.subscriber = p_subscriber AND c.part = p_parts[i] AND c.epoch = p_epochs[i]) THEN
            owned := owned || p_parts[i];
        END IF;
        IF p_release THEN
            PERFORM pg_advisory_unlock(lock_key, p_parts[i]); -- the claim's session lock
        END IF;
    END LOOP;
    RETURN owned;
END
$$;
-- +goose StatementEnd

-- Releases the next run of blocked deliveries (at most run) of each of
-- keys whose head went, unless the key has another parked delivery that is
-- not blocked, or (park_on_dead) a dead letter. A released delivery whose
-- own DeliverAt is still ahead becomes due then, and ends its key's run:
-- what follows it stays blocked behind it.
-- +goose StatementBegin
CREATE FUNCTION postbox.release_runs(p_subscriber text, p_keys text[], p_run integer, p_park_on_dead boolean)
RETURNS void
LANGUAGE sql VOLATILE AS $$
    UPDATE postbox.parked k
    SET available_at = greatest(statement_timestamp(), coalesce(rel.deliver_at, statement_timestamp()))
    FROM (SELECT b.message_id, b.deliver_at
          FROM unnest(p_keys) AS rk(key)
          CROSS JOIN LATERAL (
              SELECT w.message_id, w.deliver_at
              FROM (SELECT r.message_id, r.deliver_at,
                           count(*) FILTER (WHERE r.deliver_at > statement_timestamp())
                               OVER (ORDER BY r.seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS later
                    FROM (SELECT b.message_id, b.deliver_at, b.seq FROM postbox.parked b
                          WHERE b.subscriber = p_subscriber AND b.key = rk.key AND b.available_at = 'infinity'
                          ORDER BY b.seq
                          LIMIT p_run) r) w
              WHERE w.later = 0) b
          WHERE NOT EXISTS (
                    SELECT 1 FROM postbox.parked h
                    WHERE h.subscriber = p_subscriber AND h.key = rk.key AND h.available_at <> 'infinity')
            AND NOT (p_park_on_dead AND EXISTS (
                    SELECT 1 FROM postbox.dead_letters d
                    WHERE d.subscriber = p_subscriber AND d.key = rk.key))) rel
    WHERE k.subscriber = p_subscriber AND k.message_id = rel.message_id;
$$;
-- +goose StatementEnd

-- Records what a batch did, in its transaction: moves the cursors of the
-- owned partitions (refusing, with SQLSTATE PBC01, if another batch finished
-- there first), remembers handled IDs in processed (a second copy of one
-- raises unique_violation, and the consumer drops it as a duplicate), parks
-- stream deliveries that must wait, counts failed attempts, makes dead
-- letters, and releases the next run of a key's blocked deliveries once its
-- head is handled or dead. Arrays are parallel; empty ones cost nothing.
-- +goose StatementBegin
CREATE FUNCTION postbox.finish_batch(
    p_subscriber      text,
    p_parts           smallint[],
    p_next_seqs       bigint[],
    p_epochs          bigint[],
    p_done            uuid[],
    p_unpark          uuid[],
    p_park_ids        uuid[],
    p_park_parts      smallint[],
    p_park_seqs       bigint[],
    p_park_reasons    text[],
    p_park_attempts   integer[],
    p_park_delays_ms  bigint[],
    p_park_errors     text[],
    p_retry_ids       uuid[],
    p_retry_attempts  integer[],
    p_retry_delays_ms bigint[],
    p_retry_errors    text[],
    p_dead_ids        uuid[],
    p_dead_parked     boolean[],
    p_dead_parts      smallint[],
    p_dead_seqs       bigint[],
    p_dead_attempts   integer[],
    p_dead_errors     text[],
    p_park_on_dead    boolean,
    p_run             integer)
RETURNS void
LANGUAGE plpgsql
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    n        integer;
    released text[] := '{}';
    failed   text[];
BEGIN
    UPDATE postbox.inbox_cursors c
    SET next_seq = greatest(c.next_seq, x.next_seq), epoch = c.epoch + 1
    FROM unnest(p_parts, p_next_seqs, p_epochs) AS x(part, next_seq, epoch)
    WHERE c.subscriber = p_subscriber AND c.part = x.part AND c.epoch = x.epoch;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n <> coalesce(cardinality(p_parts), 0) THEN
        RAISE EXCEPTION 'postbox: another consumer finished a batch in one of these partitions first'
            USING ERRCODE = 'PBC01';
    END IF;

    IF cardinality(p_done) > 0 THEN
        -- Sorted, so two batches holding copies of the same IDs wait for
        -- each other in one order and cannot deadlock.
        INSERT INTO postbox.processed (subscriber, message_id)
        SELECT p_subscriber, d FROM unnest(p_done) AS d ORDER BY d;
    END IF;

    IF cardinality(p_unpark) > 0 THEN
        WITH gone AS (
            DELETE FROM postbox.parked k
            WHERE k.subscriber = p_subscriber AND k.message_id = ANY (p_unpark)
            RETURNING k.key)
        SELECT coalesce(array_agg(DISTINCT gone.key) FILTER (WHERE gone.key IS NOT NULL), '{}')
        INTO released FROM gone;
    END IF;

    IF cardinality(p_park_ids) > 0 THEN
        INSERT INTO postbox.parked (subscriber, message_id, part, seq, key_hash, attempts, reason, topic,
                                    type, key, payload, headers, available_at, created_at, enqueued_at,
                                    last_error, last_error_at, deliver_at)
        SELECT r.subscriber, r.message_id, r.part, r.seq, r.key_hash, x.attempts, x.reason, r.topic,
               r.type, r.key, r.payload, r.headers,
               CASE x.reason WHEN 'blocked' THEN 'infinity'::timestamptz
                             WHEN 'delayed' THEN r.available_at
                             ELSE greatest(statement_timestamp() + x.delay_ms * interval '1 millisecond',
                                           r.available_at) END,
               r.created_at, r.enqueued_at, nullif(x.error, ''),
               CASE WHEN x.error <> '' THEN statement_timestamp() END, r.available_at
        FROM unnest(p_park_ids, p_park_parts, p_park_seqs, p_park_reasons, p_park_attempts,
                    p_park_delays_ms, p_park_errors)
             AS x(message_id, part, seq, reason, attempts, delay_ms, error)
        JOIN postbox.inbox r ON r.subscriber = p_subscriber AND r.part = x.part AND r.seq = x.seq
        ORDER BY r.seq
        -- a copy of a message already parked (a duplicate) is not parked twice
        ON CONFLICT (subscriber, message_id) DO NOTHING;
    END IF;

    IF cardinality(p_retry_ids) > 0 THEN
        UPDATE postbox.parked k
        SET attempts = x.attempts, reason = 'retry', last_error = x.error,
            last_error_at = statement_timestamp(),
            available_at = statement_timestamp() + x.delay_ms * interval '1 millisecond'
        FROM unnest(p_retry_ids, p_retry_attempts, p_retry_delays_ms, p_retry_errors)
             AS x(message_id, attempts, delay_ms, error)
        WHERE k.subscriber = p_subscriber AND k.message_id = x.message_id
          -- an attempt already counted is not counted again
          AND k.attempts < x.attempts;
    END IF;

    IF cardinality(p_dead_ids) > 0 THEN
        INSERT INTO postbox.dead_letters (subscriber, message_id, part, seq, key_hash, attempts,
                                          replay_count, topic, type, key, payload, headers, created_at,
                                          enqueued_at, last_error, last_error_at, dead_at)
        SELECT r.subscriber, r.message_id, r.part, r.seq, r.key_hash, x.attempts,
               postbox.replay_count(r.headers), r.topic, r.type,
               r.key, r.payload, postbox.dead_letter_headers(r.headers, x.attempts, x.error),
               r.created_at, r.enqueued_at, x.error, statement_timestamp(), statement_timestamp()
        FROM unnest(p_dead_ids, p_dead_parked, p_dead_parts, p_dead_seqs, p_dead_attempts, p_dead_errors)
             AS x(message_id, parked, part, seq, attempts, error)
        JOIN postbox.inbox r ON r.subscriber = p_subscriber AND r.part = x.part AND r.seq = x.seq
        WHERE NOT x.parked
        ON CONFLICT (subscriber, message_id) DO NOTHING;
        WITH moved AS (
            DELETE FROM postbox.parked k
            USING unnest(p_dead_ids, p_dead_parked, p_dead_attempts, p_dead_errors)
                  AS x(message_id, parked, attempts, error)
            WHERE x.parked AND k.subscriber = p_subscriber AND k.message_id = x.message_id
            RETURNING k.*, x.attempts AS new_attempts, x.error AS new_error)
        INSERT INTO postbox.dead_letters (subscriber, message_id, part, seq, key_hash, attempts,
                                          replay_count, topic, type, key, payload, headers, created_at,
                                          enqueued_at, last_error, last_error_at, dead_at)
        SELECT m.subscriber, m.message_id, m.part, m.seq, m.key_hash, m.new_attempts, m.replay_count,
               m.topic, m.type, m.key, m.payload,
               postbox.dead_letter_headers(m.headers, m.new_attempts, m.new_error),
               m.created_at, m.enqueued_at, m.new_error, statement_timestamp(), statement_timestamp()
        FROM moved m
        ON CONFLICT (subscriber, message_id) DO NOTHING;
        SELECT coalesce(array_agg(DISTINCT d.key) FILTER (WHERE d.key IS NOT NULL), '{}')
        INTO failed
        FROM postbox.dead_letters d
        WHERE d.subscriber = p_subscriber AND d.message_id = ANY (p_dead_ids);
        IF p_park_on_dead THEN
            -- the key waits for its letter: nothing of it may be due
            UPDATE postbox.parked k
            SET available_at = 'infinity', reason = 'blocked'
            WHERE k.subscriber = p_subscriber AND k.key = ANY (failed) AND k.available_at <> 'infinity';
        ELSE
            -- the key proceeds: its next deliveries are released
            released := released || failed;
        END IF;
    END IF;

    -- A key whose head failed again keeps the rest of its deliveries blocked.
    IF cardinality(p_retry_ids) > 0 OR cardinality(p_park_ids) > 0 THEN
        WITH heads AS (
            SELECT k.key, min(k.seq) AS seq
            FROM postbox.parked k
            WHERE k.subscriber = p_subscriber AND k.key IS NOT NULL
              AND (k.message_id = ANY (p_retry_ids)
                   OR (k.message_id = ANY (p_park_ids) AND k.reason IN ('retry', 'delayed')))
            GROUP BY k.key)
        UPDATE postbox.parked k
        SET available_at = 'infinity', reason = 'blocked'
        FROM heads h
        WHERE k.subscriber = p_subscriber AND k.key = h.key AND k.seq > h.seq
          AND k.available_at <> 'infinity';
    END IF;

    -- Release the next run of each key whose head went, unless the key has
    -- another parked delivery that is not blocked, or (key_on_dead 'park')
    -- a dead letter.
    IF cardinality(released) > 0 THEN
        PERFORM postbox.release_runs(p_subscriber, released, p_run, p_park_on_dead);
    END IF;
END
$$;
-- +goose StatementEnd

------------------------------------------------------------------------------
-- Content-based routing rules. A message sent point-to-point (outbox.Send)
-- to a router's name goes to exactly one queue: the first rule, by
-- position, whose conditions it meets (type_name: exactly this type;
-- predicate: a SQL/JSON path over the payload, as subscription filters);
-- a rule without conditions is the default route. No rule matching, or the
-- chosen queue not declared, makes it a no-route dead letter of the
-- router. Evaluated inside the relay statement: payloads never travel
-- through Go.
CREATE TABLE postbox.routes (
    router     text        NOT NULL,
    position   integer     NOT NULL,
    queue      text        NOT NULL,
    type_name  text,
    predicate  jsonpath,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT routes_pkey PRIMARY KEY (router, position)
);

-- A filter can never fail the relay statement: that would stop every relay
-- at the row, and quarantine every message of the topic. Migration 1's
-- version let a path variable ('$.total > $limit': 42704, no such variable)
-- through; Subscribe and AddRoute now refuse those, and this version
-- matches nothing for any error the evaluation raises. (A plpgsql OTHERS
-- handler never catches a query cancel.)
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION postbox.payload_matches(payload bytea, filter jsonpath)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    result jsonb;
BEGIN
    BEGIN
        result := jsonb_path_query_first(convert_from(payload, 'UTF8')::jsonb, filter, '{}', true);
    EXCEPTION WHEN OTHERS THEN
        RETURN false;
    END;
    IF result IS NULL THEN
        RETURN false;
    END IF;
    IF jsonb_typeof(result) = 'boolean' THEN
        RETURN result = 'true'::jsonb;
    END IF;
    RETURN true;
END
$$;
-- +goose StatementEnd

------------------------------------------------------------------------------
-- Relaying.

-- Moves up to batch_size outbox rows, and at most max_bytes of payload
-- (always at least one row), into the inbox stream in one statement, so
-- payloads never travel through Go. It locks every free relay partition
-- (transaction-level advisory locks: an empty poll writes nothing), claims
-- the oldest rows of those partitions with an id above the partition's
-- mark (marks[part + 1]: ids at or below it are known to be moved, so the
-- scan starts past the rows deleted since, which a long transaction keeps
-- vacuum from removing), deletes them, and inserts one stream row per
-- matching (subscriber, message), in outbox order, so that per partition
-- stream seq order is commit order. IDs a subscriber handled within its
-- dedup window are dropped, and so are second copies of one ID within the
-- batch (a copy that comes in a later batch while the first is pending is
-- dropped by the consumer); a send to an undeclared queue becomes a dead
-- letter ('no-route'), and a send to a router goes to the queue its first
-- matching rule names (postbox.routes). only_id, when set, moves that one row (the relay
-- uses it to find a row that makes the statement fail).
-- A function for its SET clauses: the planner prices the routing join by an
-- unanalyzed subscriptions table and JIT-compiled batches of a few thousand
-- rows (798 of 957 ms); and freshly truncated slots have no statistics.
-- +goose StatementBegin
CREATE FUNCTION postbox.relay_batch(p_batch_size integer, p_max_bytes bigint, p_marks bigint[],
                                    p_only_id bigint DEFAULT NULL)
RETURNS TABLE (claimed integer, candidates integer, min_id bigint, max_id bigint, bytes bigint, delivered integer,
               duplicates integer, no_route integer, dropped integer, parts smallint[],
               subscribers text[], traceparents text[])
LANGUAGE plpgsql
SET jit = off
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH lp AS MATERIALIZED (
        SELECT p::smallint AS part
        FROM generate_series(0, postbox.order_partitions() - 1) p
        WHERE pg_try_advisory_xact_lock(1886352244, p)
    ), cand AS MATERIALIZED (
        SELECT ob.id, ob.slot, octet_length(ob.payload)::bigint AS len
        FROM postbox.outbox ob
        -- An array (an InitPlan, computed once) rather than IN (SELECT ...),
        -- so the scan walks the id index in order and stops at batch_size.
        WHERE ob.key_hash % postbox.order_partitions() = ANY (ARRAY(SELECT lp.part FROM lp))
          AND ob.id > (SELECT coalesce(min(p_marks[lp.part + 1]), 0) FROM lp)
          AND (p_only_id IS NULL OR ob.id = p_only_id)
        ORDER BY ob.id
        LIMIT p_batch_size
        FOR UPDATE OF ob SKIP LOCKED
    ), sized AS (
        SELECT w.id, w.slot
        FROM (SELECT c.id, c.slot, c.len, sum(c.len) OVER (ORDER BY c.id) AS total FROM cand c) w
        WHERE w.total - w.len < p_max_bytes
    ), moved AS (
        -- Each moved message comes out with the subscribers it routes to,
        -- computed once, here: joining separate routes back to the moved
        -- rows let the CTEs' one-row estimates make the planner loop over
        -- the batch once per row (94 ms a batch, auto_explain).
        DELETE FROM postbox.outbox o
        USING sized z
        WHERE o.slot = z.slot AND o.id = z.id
        RETURNING o.id, o.message_id, o.key_hash, o.is_queue, o.topic, o.type, o.key, o.payload,
                  o.headers, o.created_at, o.deliver_at,
                  ARRAY(
                  SELECT sub.name
                  FROM postbox.subscriptions s
                  JOIN postbox.subscribers sub ON sub.name = s.subscriber
                  WHERE NOT o.is_queue
                    AND (s.topic_pattern = o.topic
                         OR (s.topic_regex IS NOT NULL AND ('.' || o.topic) ~ s.topic_regex))
                    AND (s.filter IS NULL OR postbox.payload_matches(o.payload, s.filter))
                  UNION
                  SELECT q.name
                  FROM postbox.subscribers q
                  WHERE o.is_queue AND q.kind = 'queue' AND q.name = o.topic
                  UNION
                  -- a send to a router: the first matching rule's queue
                  SELECT q.name
                  FROM (SELECT rr.queue FROM postbox.routes rr
                        WHERE o.is_queue AND rr.router = o.topic
                          AND (rr.type_name IS NULL OR rr.type_name = o.type)
                          AND (rr.predicate IS NULL OR postbox.payload_matches(o.payload, rr.predicate))
                        ORDER BY rr.position
                        LIMIT 1) pick
                  JOIN postbox.subscribers q ON q.kind = 'queue' AND q.name = pick.queue) AS subs
    ), delivered AS (
        INSERT INTO postbox.inbox (subscriber, part, message_id, key_hash, topic, type, key, payload,
                                   headers, available_at, created_at)
        SELECT u.subscriber, (u.key_hash % postbox.order_partitions())::smallint, u.message_id,
               u.key_hash, u.topic, u.type, u.key, u.payload, u.headers,
               greatest(coalesce(u.deliver_at, now()), now()), u.created_at
        -- one copy of a message ID per subscriber and batch (a reused
        -- Message, a producer's retry), the first
        FROM (SELECT DISTINCT ON (t.name, m.message_id) t.name AS subscriber, m.*
              FROM moved m
              CROSS JOIN LATERAL unnest(m.subs) AS t(name)
              -- a scalar probe, never EXISTS: see claim_batch
              WHERE (SELECT 1 FROM postbox.processed pr
                     WHERE pr.subscriber = t.name AND pr.message_id = m.message_id LIMIT 1) IS NULL
              ORDER BY t.name, m.message_id, m.id) u
        ORDER BY u.id, u.subscriber
        RETURNING postbox.inbox.subscriber
    ), no_route AS (
        INSERT INTO postbox.dead_letters (subscriber, message_id, part, seq, key_hash, is_queue, topic, type,
                                          key, payload, headers, created_at, last_error, last_error_at, dead_at)
        SELECT m.topic, m.message_id, (m.key_hash % postbox.order_partitions())::smallint,
               nextval('postbox.inbox_seq'), m.key_hash, true, m.topic, m.type, m.key, m.payload,
               postbox.dead_letter_headers(m.headers, 0, 'no-route'), m.created_at, 'no-route', now(), now()
        FROM moved m
        WHERE m.is_queue AND cardinality(m.subs) = 0
        ORDER BY m.id
        ON CONFLICT (subscriber, message_id) DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM moved)::integer,
           (SELECT count(*) FROM cand)::integer,
           coalesce((SELECT min(m.id) FROM moved m), 0)::bigint,
           coalesce((SELECT max(m.id) FROM moved m), 0)::bigint,
           coalesce((SELECT sum(octet_length(m.payload)) FROM moved m), 0)::bigint,
           (SELECT count(*) FROM delivered)::integer,
           -- routed deliveries dropped: handled already, or a second copy
           ((SELECT coalesce(sum(cardinality(m.subs)), 0) FROM moved m) - (SELECT count(*) FROM delivered))::integer,
           (SELECT count(*) FROM no_route)::integer,
           -- topic messages no subscription matched: dropped
           (SELECT count(*) FROM moved m WHERE NOT m.is_queue AND cardinality(m.subs) = 0)::integer,
           (SELECT coalesce(array_agg(lp.part ORDER BY lp.part), '{}') FROM lp),
           (SELECT coalesce(array_agg(DISTINCT d.subscriber), '{}') FROM delivered d),
           -- for observers (relay.Config.OnBatch): the moved messages' trace
           -- contexts, at most 128
           (SELECT coalesce(array_agg(t.tp), '{}')
            FROM (SELECT m.headers->>'traceparent' AS tp FROM moved m
                  WHERE m.headers ? 'traceparent' LIMIT 128) t);
END
$$;
-- +goose StatementEnd

-- The oldest outbox row relay_batch would take now (under the same
-- partition locks and marks), or NULL: the relay asks for it when a batch
-- of one row fails, to know which row to quarantine.
-- +goose StatementBegin
CREATE FUNCTION postbox.relay_peek(p_marks bigint[]) RETURNS bigint
LANGUAGE plpgsql
SET jit = off
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
DECLARE
    found bigint;
BEGIN
    WITH lp AS MATERIALIZED (
        SELECT p::smallint AS part
        FROM generate_series(0, postbox.order_partitions() - 1) p
        WHERE pg_try_advisory_xact_lock(1886352244, p))
    SELECT ob.id INTO found
    FROM postbox.outbox ob
    WHERE ob.key_hash % postbox.order_partitions() = ANY (ARRAY(SELECT lp.part FROM lp))
      AND ob.id > (SELECT coalesce(min(p_marks[lp.part + 1]), 0) FROM lp)
    ORDER BY ob.id
    LIMIT 1;
    RETURN found;
END
$$;
-- +goose StatementEnd

-- Moves one outbox row that the relay statement cannot move (it fails on
-- it alone) to the dead letters of '_relay', with the error, so that every
-- other row keeps moving. Replaying it puts it back into the outbox.
-- Returns false when the row is gone or its partition is busy.
-- +goose StatementBegin
CREATE FUNCTION postbox.quarantine_outbox(p_id bigint, p_error text) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    WITH gone AS (
        DELETE FROM postbox.outbox o
        WHERE o.id = p_id
          AND pg_try_advisory_xact_lock(1886352244, o.key_hash % postbox.order_partitions())
        RETURNING o.*)
    INSERT INTO postbox.dead_letters (subscriber, message_id, part, seq, key_hash, is_queue, topic, type,
                                      key, payload, headers, created_at, last_error, last_error_at, dead_at)
    SELECT '_relay', g.message_id, (g.key_hash % postbox.order_partitions())::smallint, g.id, g.key_hash,
           g.is_queue, g.topic, g.type, g.key, g.payload,
           postbox.dead_letter_headers(g.headers, 0, p_error), g.created_at, p_error, now(), now()
    FROM gone g
    ON CONFLICT (subscriber, message_id) DO UPDATE SET last_error = excluded.last_error;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n > 0;
END
$$;
-- +goose StatementEnd

-- The relay's marks (see relay_batch) advance only past ids that can no
-- longer appear: an id is drawn by an INSERT that holds a lock on an
-- outbox slot until its transaction ends. So once every transaction that
-- held such a lock when the sequence stood at last_id has ended, every row
-- with an id at or below last_id is committed or gone for good. This
-- returns whether any of the given writers (from the previous call) still
-- runs, then the sequence's position, then the transactions writing the
-- outbox now — in that order. A long transaction elsewhere (the one that
-- holds vacuum back) does not delay the marks unless it writes the outbox.
-- +goose StatementBegin
CREATE FUNCTION postbox.outbox_horizon(p_writers text[], OUT writing boolean, OUT last_id bigint,
                                       OUT writers text[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    writing := EXISTS (
        SELECT 1 FROM pg_locks l WHERE l.locktype = 'virtualxid' AND l.virtualxid = ANY (p_writers));
    SELECT s.last_value INTO last_id FROM postbox.outbox_seq s;
    SELECT coalesce(array_agg(DISTINCT l.virtualtransaction), '{}') INTO writers
    FROM pg_locks l
    WHERE l.locktype = 'relation' AND l.mode = 'RowExclusiveLock' AND l.pid <> pg_backend_pid()
      AND l.relation IN (SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = 'postbox.outbox'::regclass
                         UNION ALL SELECT 'postbox.outbox'::regclass);
END
$$;
-- +goose StatementEnd

-- Empties the slots nothing needs any more, with TRUNCATE: it returns
-- their space at once, even while a long transaction keeps vacuum from
-- removing deleted rows. An outbox slot qualifies when it is not the
-- current one nor either neighbour and holds no row; a stream slot when it
-- is not the current one nor the next and every cursor of a declared
-- subscriber is past all its rows. Both are checked under an exclusive
-- lock, taken only if it can be had within lock_timeout, so a busy slot is
-- simply tried again later. Returns how many slots were emptied; a call
-- that finds nothing to do writes nothing.
-- +goose StatementBegin
CREATE FUNCTION postbox.rotate_slots() RETURNS integer
LANGUAGE plpgsql
SET lock_timeout = '50ms'
AS $$
#variable_conflict use_column
DECLARE
    cur_out constant integer := postbox.outbox_slot();
    cur_in  constant integer := ((SELECT s.last_value FROM postbox.inbox_seq s) >> 16) & 7;
    emptied integer := 0;
    rel     regclass;
    busy    boolean;
BEGIN
    FOR slot IN 0..7 LOOP
        IF slot NOT IN (cur_out, (cur_out + 1) % 8, (cur_out + 7) % 8) THEN
            rel := format('postbox.outbox_%s', slot)::regclass;
            IF pg_relation_size(rel) > 0 THEN
                BEGIN
                    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', rel);
                    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', rel) INTO busy;
                    IF NOT busy THEN
                        EXECUTE format('TRUNCATE %s', rel);
                        emptied := emptied + 1;
                    END IF;
                EXCEPTION WHEN lock_not_available THEN
                    NULL; -- busy: next time
                END;
            END IF;
        END IF;
        IF slot NOT IN (cur_in, (cur_in + 1) % 8) THEN
            rel := format('postbox.inbox_%s', slot)::regclass;
            IF pg_relation_size(rel) > 0 THEN
                BEGIN
                    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', rel);
                    EXECUTE format(
                        'SELECT EXISTS (SELECT 1 FROM postbox.inbox_cursors c
                                        JOIN postbox.subscribers s ON s.name = c.subscriber
                                        WHERE EXISTS (SELECT 1 FROM %s r
                                                      WHERE r.subscriber = c.subscriber AND r.part = c.part
                                                        AND r.seq >= c.next_seq))', rel) INTO busy;
                    IF NOT busy THEN
                        EXECUTE format('TRUNCATE %s', rel);
                        emptied := emptied + 1;
                    END IF;
                EXCEPTION WHEN lock_not_available THEN
                    NULL;
                END;
            END IF;
        END IF;
    END LOOP;
    RETURN emptied;
END
$$;
-- +goose StatementEnd

------------------------------------------------------------------------------
-- Dead letters from SQL, Go and the binary alike.

-- The dead letters a filter selects, oldest dead first: what listing,
-- counting and purging share. NULL means "any" for every argument; a NULL
-- subscriber selects every subscriber's (listing only: replay and purge
-- require one). A plain SQL function, so the planner inlines it.
-- +goose StatementBegin
CREATE FUNCTION postbox.select_dead_letters(
    subscriber  text,
    message_ids uuid[]      DEFAULT NULL,
    error_like  text        DEFAULT NULL,
    type_name   text        DEFAULT NULL,
    dead_since  timestamptz DEFAULT NULL,
    dead_until  timestamptz DEFAULT NULL,
    max_rows    integer     DEFAULT NULL)
RETURNS SETOF postbox.dead_letters
LANGUAGE sql STABLE AS $$
    SELECT d.*
    FROM postbox.dead_letters d
    WHERE (select_dead_letters.subscriber IS NULL OR d.subscriber = select_dead_letters.subscriber)
      AND (select_dead_letters.message_ids IS NULL OR d.message_id = ANY (select_dead_letters.message_ids))
      AND (select_dead_letters.error_like IS NULL OR d.last_error LIKE select_dead_letters.error_like)
      AND (select_dead_letters.type_name IS NULL OR d.type = select_dead_letters.type_name)
      AND (select_dead_letters.dead_since IS NULL OR d.dead_at >= select_dead_letters.dead_since)
      AND (select_dead_letters.dead_until IS NULL OR d.dead_at < select_dead_letters.dead_until)
    ORDER BY d.dead_at, d.subscriber, d.message_id
    LIMIT select_dead_letters.max_rows
$$;
-- +goose StatementEnd

-- The dead letters a replay with these arguments takes: those the filter
-- selects, in their original order (seq), leaving out every letter that
-- has an earlier dead letter of its key the filter leaves behind, then at
-- most max_rows of them. So a replay never hands a key's later message to
-- its subscriber while an earlier one of the key stays dead.
-- +goose StatementBegin
CREATE FUNCTION postbox.replayable_dead_letters(
    subscriber  text,
    message_ids uuid[]      DEFAULT NULL,
    error_like  text        DEFAULT NULL,
    type_name   text        DEFAULT NULL,
    dead_since  timestamptz DEFAULT NULL,
    dead_until  timestamptz DEFAULT NULL,
    max_rows    integer     DEFAULT NULL)
RETURNS SETOF postbox.dead_letters
LANGUAGE sql STABLE AS $$
    WITH sel AS (
        SELECT d.* FROM postbox.select_dead_letters(replayable_dead_letters.subscriber,
            replayable_dead_letters.message_ids, replayable_dead_letters.error_like,
            replayable_dead_letters.type_name, replayable_dead_letters.dead_since,
            replayable_dead_letters.dead_until) d
        WHERE replayable_dead_letters.subscriber IS NOT NULL)
    SELECT s.*
    FROM sel s
    WHERE s.key IS NULL OR NOT EXISTS (
        SELECT 1 FROM postbox.dead_letters e
        WHERE e.subscriber = s.subscriber AND e.key = s.key AND e.seq < s.seq
          AND NOT EXISTS (SELECT 1 FROM sel t WHERE t.message_id = e.message_id))
    ORDER BY s.seq
    LIMIT replayable_dead_letters.max_rows
$$;
-- +goose StatementEnd

-- Replays dead letters of one subscriber. Every other argument narrows the
-- selection and NULL means "any": message_ids (one of these IDs), error_like
-- (last_error LIKE this pattern), type_name (exactly this message type),
-- dead_since / dead_until (dead_at in [dead_since, dead_until)), and max_rows
-- (at most this many, in original order; NULL means all). The letters
-- replayable_dead_letters names are parked again, due now and with their
-- attempts reset, behind any earlier parked message of their key and before
-- its later ones: a key's messages keep their original order. Each is
-- stamped with x-replayed-at and x-replay-count and recorded in
-- postbox.replays. Letters of '_relay' and no-route letters (a send to an
-- undeclared queue or one no routing rule matched) never reached a stream:
-- they go back into the outbox, under their keys' producer locks, so the
-- relay routes them anew.
-- Returns how many. Concurrent replays of the same letters are safe: a
-- letter another replay took first is gone once its lock is released.
--   SELECT postbox.replay_dead_letters('inventory');
--   SELECT postbox.replay_dead_letters('inventory', error_like => '%timeout%',
--                                      dead_since => now() - interval '1 hour');
-- +goose StatementBegin
CREATE FUNCTION postbox.replay_dead_letters(
    subscriber  text,
    message_ids uuid[]      DEFAULT NULL,
    error_like  text        DEFAULT NULL,
    type_name   text        DEFAULT NULL,
    dead_since  timestamptz DEFAULT NULL,
    dead_until  timestamptz DEFAULT NULL,
    max_rows    integer     DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    n     integer;
    heads jsonb;
    parts smallint[];
BEGIN
    IF replay_dead_letters.subscriber IS NULL THEN
        RETURN 0; -- required: NULL replays nothing
    END IF;
    parts := ARRAY(SELECT DISTINCT d.part
                   FROM postbox.replayable_dead_letters(replay_dead_letters.subscriber, replay_dead_letters.message_ids,
                            replay_dead_letters.error_like, replay_dead_letters.type_name,
                            replay_dead_letters.dead_since, replay_dead_letters.dead_until,
                            replay_dead_letters.max_rows) d);
    PERFORM postbox.lock_order_partitions(replay_dead_letters.subscriber, parts);
    WITH sel AS MATERIALIZED (
        -- A no-route letter is a send that reached no queue (is_queue);
        -- a handler's error text never makes a letter one.
        SELECT d.subscriber, d.message_id, d.key, d.key_hash,
               (d.subscriber = '_relay' OR (d.is_queue AND d.last_error = 'no-route')) AS to_outbox
        FROM postbox.replayable_dead_letters(replay_dead_letters.subscriber, replay_dead_letters.message_ids,
                 replay_dead_letters.error_like, replay_dead_letters.type_name,
                 replay_dead_letters.dead_since, replay_dead_letters.dead_until,
                 replay_dead_letters.max_rows) d
        WHERE d.part = ANY (parts) -- the partitions locked above
    ), locked AS MATERIALIZED (
        -- The producers' per-key locks before the outbox ids are drawn (an
        -- InitPlan of the DELETE), as outbox.Publish takes them.
        SELECT count(pg_advisory_xact_lock(1886352245, k.key_hash)) AS n
        FROM (SELECT DISTINCT s.key_hash FROM sel s WHERE s.to_outbox AND s.key IS NOT NULL ORDER BY 1) k
    ), taken AS (
        DELETE FROM postbox.dead_letters d
        USING sel
        WHERE d.subscriber = sel.subscriber AND d.message_id = sel.message_id
          AND (SELECT l.n FROM locked l) >= 0
        RETURNING d.*, sel.to_outbox
    ), requeued AS (
        INSERT INTO postbox.outbox (message_id, key_hash, is_queue, topic, type, key, payload, headers,
                                    created_at)
        SELECT t.message_id, t.key_hash, t.is_queue, t.topic, t.type, t.key,
               t.payload, coalesce(t.headers, '{}'::jsonb) || jsonb_build_object(
                   'x-replayed-at', postbox.utc_text(now()),
                   'x-replay-count', (t.replay_count + 1)::text),
               t.created_at
        FROM taken t
        WHERE t.to_outbox
        ORDER BY t.seq
        RETURNING 1
    ), parked AS (
        INSERT INTO postbox.parked (subscriber, message_id, part, seq, key_hash, attempts, replay_count,
                                    reason, topic, type, key, payload, headers, available_at,
                                    created_at, enqueued_at, last_error, last_error_at)
        SELECT t.subscriber, t.message_id, t.part, t.seq, t.key_hash, 0, t.replay_count + 1, 'replayed',
               t.topic, t.type, t.key, t.payload,
               coalesce(t.headers, '{}'::jsonb) || jsonb_build_object(
                   'x-replayed-at', postbox.utc_text(now()),
                   'x-replay-count', (t.replay_count + 1)::text),
               -- only a key's earliest parked delivery may be due
               CASE WHEN t.key IS NULL THEN now()
                    WHEN row_number() OVER (PARTITION BY t.key ORDER BY t.seq) = 1
                         AND NOT EXISTS (SELECT 1 FROM postbox.parked e
                                         WHERE e.subscriber = t.subscriber AND e.key = t.key
                                           AND e.seq < t.seq)
                    THEN now()
                    ELSE 'infinity'::timestamptz END,
               t.created_at, t.enqueued_at, t.last_error, t.last_error_at
        FROM taken t
        WHERE NOT t.to_outbox
        ORDER BY t.seq
        ON CONFLICT (subscriber, message_id) DO NOTHING
        RETURNING postbox.parked.key, postbox.parked.seq
    ), logged AS (
        INSERT INTO postbox.replays (subscriber, message_id, attempts, last_error)
        SELECT t.subscriber, t.message_id, t.attempts, t.last_error FROM taken t
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM logged)::integer,
           (SELECT coalesce(jsonb_object_agg(h.key, h.seq), '{}')
            FROM (SELECT p.key, min(p.seq) AS seq FROM parked p WHERE p.key IS NOT NULL GROUP BY p.key) h)
    INTO n, heads;
    -- A key's later parked deliveries now wait behind its replayed ones.
    UPDATE postbox.parked k
    SET available_at = 'infinity', reason = 'blocked'
    FROM jsonb_each_text(heads) AS h(key, seq)
    WHERE k.subscriber = replay_dead_letters.subscriber AND k.key = h.key AND k.seq > h.seq::bigint
      AND k.available_at <> 'infinity';
    RETURN n;
END
$$;
-- +goose StatementEnd

-- Deletes dead letters of one subscriber, with the same arguments and the
-- same selection as listing (select_dead_letters). With key_on_dead 'park',
-- a key none of whose letters remain has its next deliveries released.
-- Returns how many.
--   SELECT postbox.purge_dead_letters('inventory', error_like => 'no-route');
-- +goose StatementBegin
CREATE FUNCTION postbox.purge_dead_letters(
    subscriber  text,
    message_ids uuid[]      DEFAULT NULL,
    error_like  text        DEFAULT NULL,
    type_name   text        DEFAULT NULL,
    dead_since  timestamptz DEFAULT NULL,
    dead_until  timestamptz DEFAULT NULL,
    max_rows    integer     DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    n     integer;
    keys  text[];
    parts smallint[];
BEGIN
    IF purge_dead_letters.subscriber IS NULL THEN
        RETURN 0; -- required: NULL purges nothing
    END IF;
    parts := ARRAY(SELECT DISTINCT s.part
                   FROM postbox.select_dead_letters(purge_dead_letters.subscriber, purge_dead_letters.message_ids,
                            purge_dead_letters.error_like, purge_dead_letters.type_name,
                            purge_dead_letters.dead_since, purge_dead_letters.dead_until,
                            purge_dead_letters.max_rows) s);
    PERFORM postbox.lock_order_partitions(purge_dead_letters.subscriber, parts);
    WITH purged AS (
        DELETE FROM postbox.dead_letters d
        USING (SELECT s.subscriber, s.message_id
               FROM postbox.select_dead_letters(purge_dead_letters.subscriber, purge_dead_letters.message_ids,
                        purge_dead_letters.error_like, purge_dead_letters.type_name,
                        purge_dead_letters.dead_since, purge_dead_letters.dead_until,
                        purge_dead_letters.max_rows) s
               WHERE s.part = ANY (parts)) sel -- the partitions locked above
        WHERE d.subscriber = sel.subscriber AND d.message_id = sel.message_id
        RETURNING d.key
    )
    SELECT count(*)::integer, coalesce(array_agg(DISTINCT p.key) FILTER (WHERE p.key IS NOT NULL), '{}')
    INTO n, keys FROM purged p;
    IF cardinality(keys) > 0 AND EXISTS (
            SELECT 1 FROM postbox.subscribers s
            WHERE s.name = purge_dead_letters.subscriber AND s.key_on_dead = 'park') THEN
        PERFORM postbox.release_runs(purge_dead_letters.subscriber, keys, 1000, true);
    END IF;
    RETURN n;
END
$$;
-- +goose StatementEnd

-- Operators' view: per declared subscriber, deliveries ready now (stream
-- past the cursors, and due parked ones), waiting ones (delayed, in backoff
-- or blocked behind their key), dead letters, and when the oldest pending
-- delivery was enqueued. Exact: it reads every pending delivery, so it is
-- for psql and `postbox stats`; /metrics uses bounded estimates.
CREATE VIEW postbox.queue_depths AS
SELECT s.name AS subscriber,
       s.kind,
       coalesce(st.ready, 0) + (SELECT count(*) FROM postbox.parked k
                                WHERE k.subscriber = s.name AND k.available_at <= now()) AS ready,
       coalesce(st.waiting, 0) + (SELECT count(*) FROM postbox.parked k
                                  WHERE k.subscriber = s.name AND k.available_at > now()) AS waiting,
       (SELECT count(*) FROM postbox.dead_letters d WHERE d.subscriber = s.name) AS dead,
       least(st.oldest, (SELECT min(k.enqueued_at) FROM postbox.parked k WHERE k.subscriber = s.name))
           AS oldest_pending
FROM postbox.subscribers s
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE r.available_at <= now()) AS ready,
           count(*) FILTER (WHERE r.available_at > now()) AS waiting,
           min(r.enqueued_at) AS oldest
    FROM postbox.inbox_cursors c
    JOIN postbox.inbox r ON r.subscriber = c.subscriber AND r.part = c.part AND r.seq >= c.next_seq
    WHERE c.subscriber = s.name) st ON true;


------------------------------------------------------------------------------
-- The Sink path (relay.Config.Sink): messages travel through Go to another
-- broker, one relay partition at a time, held with a session lock while the
-- sink delivers, so no transaction stays open across network I/O.

-- Messages not yet due wait here, out of the outbox: a claim would
-- otherwise step over them every time, and they would keep their slot from
-- being truncated. Released back into the outbox (with a new id) when due.
CREATE TABLE postbox.scheduled (
    id         bigint      NOT NULL,
    message_id uuid        NOT NULL,
    key_hash   integer     NOT NULL,
    is_queue   boolean     NOT NULL DEFAULT false,
    topic      text        NOT NULL,
    type       text        NOT NULL DEFAULT '',
    key        text,
    payload    bytea       NOT NULL,
    headers    jsonb,
    created_at timestamptz NOT NULL,
    deliver_at timestamptz NOT NULL,
    CONSTRAINT scheduled_pkey PRIMARY KEY (id)
);
CREATE INDEX scheduled_due_idx ON postbox.scheduled (deliver_at);

-- The due rows among the oldest batch_size outbox rows of relay partition
-- part with an id above after_id, for a sink; the rows of that window that
-- are due only later move to postbox.scheduled. Only the window: a row
-- past it is neither returned nor scheduled, so the caller's mark may pass
-- no further than the last row returned. The caller holds the partition.
-- +goose StatementBegin
CREATE FUNCTION postbox.sink_claim(p_part integer, p_after_id bigint, p_batch_size integer)
RETURNS SETOF postbox.outbox
LANGUAGE plpgsql
SET jit = off
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
BEGIN
    WITH later AS (
        DELETE FROM postbox.outbox o
        -- only among the rows the claim below would look at
        USING (SELECT f.slot, f.id
               FROM (SELECT ob.slot, ob.id, ob.deliver_at FROM postbox.outbox ob
                     WHERE ob.key_hash % postbox.order_partitions() = p_part AND ob.id > p_after_id
                     ORDER BY ob.id LIMIT p_batch_size) f
               WHERE f.deliver_at > now() + interval '1 second') z
        WHERE o.slot = z.slot AND o.id = z.id
        RETURNING o.*)
    INSERT INTO postbox.scheduled (id, message_id, key_hash, is_queue, topic, type, key, payload, headers,
                                   created_at, deliver_at)
    SELECT l.id, l.message_id, l.key_hash, l.is_queue, l.topic, l.type, l.key, l.payload, l.headers,
           l.created_at, l.deliver_at
    FROM later l
    ON CONFLICT (id) DO NOTHING;
    RETURN QUERY
    SELECT w.* FROM (SELECT ob.* FROM postbox.outbox ob
                     WHERE ob.key_hash % postbox.order_partitions() = p_part AND ob.id > p_after_id
                     ORDER BY ob.id LIMIT p_batch_size) w
    WHERE w.deliver_at IS NULL OR w.deliver_at <= now() + interval '1 second'
    ORDER BY w.id;
END
$$;
-- +goose StatementEnd

-- Moves scheduled messages that are due back into the outbox, at most
-- batch_size, and returns how many. A call that finds none writes nothing.
-- +goose StatementBegin
CREATE FUNCTION postbox.release_scheduled(p_batch_size integer) RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    WITH due AS (
        DELETE FROM postbox.scheduled s
        USING (SELECT d.id FROM postbox.scheduled d WHERE d.deliver_at <= now()
               ORDER BY d.deliver_at, d.id LIMIT p_batch_size) z
        WHERE s.id = z.id
        RETURNING s.*)
    INSERT INTO postbox.outbox (message_id, key_hash, is_queue, topic, type, key, payload, headers,
                                created_at, deliver_at)
    SELECT d.message_id, d.key_hash, d.is_queue, d.topic, d.type, d.key, d.payload, d.headers,
           d.created_at, d.deliver_at
    FROM due d
    ORDER BY d.deliver_at, d.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
-- +goose StatementEnd
-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION postbox.payload_matches(payload bytea, filter jsonpath)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    doc    jsonb;
    result jsonb;
BEGIN
    BEGIN
        doc := convert_from(payload, 'UTF8')::jsonb;
        result := jsonb_path_query_first(doc, filter, '{}', true);
    EXCEPTION WHEN data_exception OR character_not_in_repertoire
                OR untranslatable_character OR program_limit_exceeded THEN
        RETURN false;
    END;
    IF result IS NULL THEN
        RETURN false;
    END IF;
    IF jsonb_typeof(result) = 'boolean' THEN
        RETURN result = 'true'::jsonb;
    END IF;
    RETURN true;
END
$$;
-- +goose StatementEnd
DROP TABLE postbox.routes;
DROP FUNCTION postbox.release_scheduled(integer);
DROP FUNCTION postbox.sink_claim(integer, bigint, integer);

-- Back to the postbox 1 shape, carrying every outbox row, pending delivery
-- and dead letter over (quarantined '_relay' rows go back to the outbox).
DROP VIEW postbox.queue_depths;
DROP FUNCTION postbox.purge_dead_letters(text, uuid[], text, text, timestamptz, timestamptz, integer);
DROP FUNCTION postbox.replay_dead_letters(text, uuid[], text, text, timestamptz, timestamptz, integer);
DROP FUNCTION postbox.replayable_dead_letters(text, uuid[], text, text, timestamptz, timestamptz, integer);
DROP FUNCTION postbox.select_dead_letters(text, uuid[], text, text, timestamptz, timestamptz, integer);
DROP FUNCTION postbox.rotate_slots();
DROP FUNCTION postbox.outbox_horizon(text[]);
DROP FUNCTION postbox.quarantine_outbox(bigint, text);
DROP FUNCTION postbox.relay_peek(bigint[]);
DROP FUNCTION postbox.relay_batch(integer, bigint, bigint[], bigint);
DROP FUNCTION postbox.finish_batch(text, smallint[], bigint[], bigint[], uuid[], uuid[], uuid[], smallint[],
    bigint[], text[], integer[], bigint[], text[], uuid[], integer[], bigint[], text[], uuid[], boolean[],
    smallint[], bigint[], integer[], text[], boolean, integer);
DROP FUNCTION postbox.own_partitions(text, smallint[], bigint[], boolean);
DROP FUNCTION postbox.claim_batch(text, integer, integer, smallint[], boolean);
DROP FUNCTION postbox.dead_letter_headers(jsonb, integer, text);

DROP TRIGGER subscribers_cursors ON postbox.subscribers;
DROP FUNCTION postbox.subscriber_cursors();

CREATE TABLE postbox.relay_partitions (
    partition integer NOT NULL,
    CONSTRAINT relay_partitions_pkey PRIMARY KEY (partition),
    CONSTRAINT relay_partitions_range CHECK (partition >= 0 AND partition < 16)
);
INSERT INTO postbox.relay_partitions (partition) SELECT generate_series(0, 15);


ALTER TABLE postbox.outbox RENAME TO outbox_v2;
ALTER INDEX postbox.outbox_id_idx RENAME TO outbox_v2_id_idx;
ALTER TABLE postbox.outbox_v2 RENAME CONSTRAINT outbox_key_hash TO outbox_v2_key_hash;
CREATE TABLE postbox.outbox (
    id         bigint      GENERATED ALWAYS AS IDENTITY,
    message_id uuid        NOT NULL,
    -- key_hash is murmur2(key) & 0x7fffffff (Kafka's partitioner); for a
    -- message without a key it hashes the message ID, so keyless messages
    -- spread over relay partitions.
    key_hash   integer     NOT NULL,
    -- true for a point-to-point send to the queue named by topic.
    is_queue   boolean     NOT NULL DEFAULT false,
    topic      text        NOT NULL,
    type       text        NOT NULL DEFAULT '',
    key        text,
    payload    bytea       NOT NULL,
    headers    jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    deliver_at timestamptz,
    CONSTRAINT outbox_pkey PRIMARY KEY (id),
    -- a negative hash would fall in no relay partition and never move
    CONSTRAINT outbox_key_hash CHECK (key_hash >= 0)
);

INSERT INTO postbox.outbox (id, message_id, key_hash, is_queue, topic, type, key, payload, headers,
                            created_at, deliver_at)
OVERRIDING SYSTEM VALUE
SELECT o.id, o.message_id, o.key_hash, o.is_queue, o.topic, o.type, o.key, o.payload, o.headers,
       o.created_at, o.deliver_at
FROM postbox.outbox_v2 o;
SELECT setval(pg_get_serial_sequence('postbox.outbox', 'id'),
              greatest((SELECT max(id) FROM postbox.outbox), (SELECT last_value FROM postbox.outbox_seq), 1));
INSERT INTO postbox.outbox (message_id, key_hash, is_queue, topic, type, key, payload, headers, created_at)
SELECT d.message_id, d.key_hash, d.is_queue, d.topic, d.type, d.key, d.payload, d.headers, d.created_at
FROM postbox.dead_letters d WHERE d.subscriber = '_relay' ORDER BY d.seq;
INSERT INTO postbox.outbox (message_id, key_hash, is_queue, topic, type, key, payload, headers, created_at,
                            deliver_at)
SELECT s.message_id, s.key_hash, s.is_queue, s.topic, s.type, s.key, s.payload, s.headers, s.created_at,
       s.deliver_at
FROM postbox.scheduled s ORDER BY s.deliver_at, s.id;
DROP TABLE postbox.scheduled;

ALTER TABLE postbox.inbox RENAME TO inbox_v2;
ALTER INDEX postbox.inbox_cursor_idx RENAME TO inbox_v2_cursor_idx;
CREATE TABLE postbox.inbox (
    subscriber    text        NOT NULL,
    message_id    uuid        NOT NULL,
    -- seq orders deliveries of one subscriber; the relay inserts in outbox
    -- order under relay-partition locks, so per key it is publish order.
    seq           bigint      GENERATED ALWAYS AS IDENTITY,
    partition     integer     NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    replay_count  integer     NOT NULL DEFAULT 0,
    status        text        NOT NULL DEFAULT 'pending',
    topic         text        NOT NULL,
    type          text        NOT NULL DEFAULT '',
    key           text,
    payload       bytea       NOT NULL,
    headers       jsonb,
    -- when the next attempt may start: deliver_at for a delayed message,
    -- now() + backoff after a failure.
    available_at  timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL,
    enqueued_at   timestamptz NOT NULL DEFAULT now(),
    last_error    text,
    last_error_at timestamptz,
    dead_at       timestamptz,
    CONSTRAINT inbox_pkey PRIMARY KEY (subscriber, message_id),
    CONSTRAINT inbox_status CHECK (status IN ('pending', 'dead'))
);

-- Claiming: the oldest available pending rows of one subscriber.
CREATE INDEX inbox_claim_idx ON postbox.inbox (subscriber, available_at, seq)
    WHERE status = 'pending';
-- Keyless deliveries, claimed on their own so that rows waiting behind a
-- blocked key's head can never hide them from the claim.
CREATE INDEX inbox_keyless_idx ON postbox.inbox (subscriber, available_at, seq)
    WHERE status = 'pending' AND key IS NULL;
-- Per-key order: is there an earlier pending row of the same key?
CREATE INDEX inbox_key_idx ON postbox.inbox (subscriber, key, seq)
    WHERE status = 'pending' AND key IS NOT NULL;
-- Dead letters by subscriber and age.
CREATE INDEX inbox_dead_idx ON postbox.inbox (subscriber, dead_at)
    WHERE status = 'dead';

INSERT INTO postbox.inbox (subscriber, message_id, seq, partition, attempts, replay_count, status, topic,
                           type, key, payload, headers, available_at, created_at, enqueued_at, last_error,
                           last_error_at, dead_at)
OVERRIDING SYSTEM VALUE
SELECT r.subscriber, r.message_id, r.seq, r.key_hash % coalesce(s.partitions, 16), 0,
       postbox.replay_count(r.headers), 'pending', r.topic,
       r.type, r.key, r.payload, r.headers, r.available_at, r.created_at, r.enqueued_at, NULL, NULL, NULL
FROM postbox.inbox_v2 r
JOIN postbox.inbox_cursors c ON c.subscriber = r.subscriber AND c.part = r.part AND r.seq >= c.next_seq
LEFT JOIN postbox.subscribers s ON s.name = r.subscriber
ON CONFLICT (subscriber, message_id) DO NOTHING;
INSERT INTO postbox.inbox (subscriber, message_id, seq, partition, attempts, replay_count, status, topic,
                           type, key, payload, headers, available_at, created_at, enqueued_at, last_error,
                           last_error_at, dead_at)
OVERRIDING SYSTEM VALUE
SELECT k.subscriber, k.message_id, k.seq, k.key_hash % coalesce(s.partitions, 16), k.attempts, k.replay_count,
       'pending', k.topic, k.type, k.key, k.payload, k.headers,
       CASE WHEN k.available_at = 'infinity' THEN greatest(now(), coalesce(k.deliver_at, now()))
            ELSE k.available_at END,
       k.created_at, k.enqueued_at, k.last_error, k.last_error_at, NULL
FROM postbox.parked k
LEFT JOIN postbox.subscribers s ON s.name = k.subscriber
ON CONFLICT (subscriber, message_id) DO NOTHING;
INSERT INTO postbox.inbox (subscriber, message_id, seq, partition, attempts, replay_count, status, topic,
                           type, key, payload, headers, available_at, created_at, enqueued_at, last_error,
                           last_error_at, dead_at)
OVERRIDING SYSTEM VALUE
SELECT d.subscriber, d.message_id, d.seq, d.key_hash % coalesce(s.partitions, 16), d.attempts, d.replay_count,
       'dead', d.topic, d.type, d.key, d.payload, d.headers, d.dead_at, d.created_at, d.enqueued_at,
       d.last_error, d.last_error_at, d.dead_at
FROM postbox.dead_letters d
LEFT JOIN postbox.subscribers s ON s.name = d.subscriber
WHERE d.subscriber <> '_relay'
ON CONFLICT (subscriber, message_id) DO NOTHING;
SELECT setval(pg_get_serial_sequence('postbox.inbox', 'seq'),
              greatest((SELECT max(seq) FROM postbox.inbox), (SELECT last_value FROM postbox.inbox_seq), 1));
ALTER TABLE postbox.inbox SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0, fillfactor = 90);
ALTER TABLE postbox.outbox SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0, fillfactor = 100);

DROP TABLE postbox.dead_letters;
DROP TABLE postbox.parked;
DROP TABLE postbox.inbox_cursors;
DROP TABLE postbox.inbox_v2;
DROP TABLE postbox.outbox_v2;
DROP SEQUENCE postbox.inbox_seq;
DROP SEQUENCE postbox.outbox_seq;
ALTER TABLE postbox.subscribers DROP CONSTRAINT subscribers_key_on_dead;
ALTER TABLE postbox.subscribers DROP COLUMN key_on_dead;

-- +goose StatementBegin
CREATE FUNCTION postbox.walk_key_heads(subscriber text, after_key text, visit_limit integer)
RETURNS TABLE (key text, message_id uuid, available boolean)
LANGUAGE sql STABLE
SET jit = off
AS $$
    WITH RECURSIVE walk AS (
        (SELECT e.key, e.seq, e.message_id, e.available_at
         FROM postbox.inbox e
         WHERE e.subscriber = walk_key_heads.subscriber AND e.status = 'pending'
           AND e.key IS NOT NULL AND e.key > walk_key_heads.after_key
         ORDER BY e.key, e.seq
         LIMIT 1)
        UNION ALL
        SELECT n.key, n.seq, n.message_id, n.available_at
        FROM walk w
        CROSS JOIN LATERAL (
            SELECT e.key, e.seq, e.message_id, e.available_at
            FROM postbox.inbox e
            WHERE e.subscriber = walk_key_heads.subscriber AND e.status = 'pending'
              AND e.key IS NOT NULL AND e.key > w.key
            ORDER BY e.key, e.seq
            LIMIT 1) n
    )
    SELECT walk.key, walk.message_id, walk.available_at <= now()
    FROM walk
    LIMIT walk_key_heads.visit_limit
$$;
-- +goose StatementEnd

CREATE VIEW postbox.dead_letters AS
SELECT subscriber, message_id, topic, type, key, attempts, replay_count,
       last_error, created_at, dead_at, headers, payload
FROM postbox.inbox
WHERE status = 'dead';

CREATE VIEW postbox.queue_depths AS
SELECT s.name AS subscriber,
       s.kind,
       count(*) FILTER (WHERE i.status = 'pending' AND i.available_at <= now()) AS ready,
       count(*) FILTER (WHERE i.status = 'pending' AND i.available_at > now()) AS waiting,
       count(*) FILTER (WHERE i.status = 'dead') AS dead,
       min(i.enqueued_at) FILTER (WHERE i.status = 'pending') AS oldest_pending
FROM postbox.subscribers s
LEFT JOIN postbox.inbox i ON i.subscriber = s.name
GROUP BY s.name, s.kind;

-- +goose StatementBegin
CREATE FUNCTION postbox.select_dead_letters(
    subscriber  text,
    message_ids uuid[]      DEFAULT NULL,
    error_like  text        DEFAULT NULL,
    type_name   text        DEFAULT NULL,
    dead_since  timestamptz DEFAULT NULL,
    dead_until  timestamptz DEFAULT NULL,
    max_rows    integer     DEFAULT NULL)
RETURNS SETOF postbox.inbox
LANGUAGE sql STABLE AS $$
    SELECT d.*
    FROM postbox.inbox d
    WHERE d.status = 'dead'
      AND (select_dead_letters.subscriber IS NULL OR d.subscriber = select_dead_letters.subscriber)
      AND (select_dead_letters.message_ids IS NULL OR d.message_id = ANY (select_dead_letters.message_ids))
      AND (select_dead_letters.error_like IS NULL OR d.last_error LIKE select_dead_letters.error_like)
      AND (select_dead_letters.type_name IS NULL OR d.type = select_dead_letters.type_name)
      AND (select_dead_letters.dead_since IS NULL OR d.dead_at >= select_dead_letters.dead_since)
      AND (select_dead_letters.dead_until IS NULL OR d.dead_at < select_dead_letters.dead_until)
    ORDER BY d.dead_at, d.subscriber, d.message_id
    LIMIT select_dead_letters.max_rows
$$;
-- +goose StatementEnd

-- Replay dead letters of one subscriber. Every other argument narrows the
-- selection and NULL means "any": message_ids (one of these IDs), error_like
-- (last_error LIKE this pattern), type_name (exactly this message type),
-- dead_since / dead_until (dead_at in [dead_since, dead_until)), and max_rows
-- (at most this many, oldest dead_at first; NULL means all). Each selected
-- letter becomes pending again with its attempts reset, is stamped with
-- x-replayed-at and x-replay-count, and is recorded in postbox.replays.
-- Returns how many. The Go package dlq calls this function, so psql, the
-- binary and Go replay the same way. Concurrent replays of the same letters
-- are safe: a letter another replay took first is no longer dead and is
-- skipped after its lock is released.
--   SELECT postbox.replay_dead_letters('inventory');
--   SELECT postbox.replay_dead_letters('inventory', error_like => '%timeout%',
--                                      dead_since => now() - interval '1 hour');
-- +goose StatementBegin
CREATE FUNCTION postbox.replay_dead_letters(
    subscriber  text,
    message_ids uuid[]      DEFAULT NULL,
    error_like  text        DEFAULT NULL,
    type_name   text        DEFAULT NULL,
    dead_since  timestamptz DEFAULT NULL,
    dead_until  timestamptz DEFAULT NULL,
    max_rows    integer     DEFAULT NULL)
RETURNS integer
LANGUAGE sql VOLATILE AS $$
    WITH replayed AS (
        UPDATE postbox.inbox i
        SET status = 'pending',
            -- A new seq queues the letter behind its key's pending messages:
            -- keeping the old one would make it its key's head at once, even
            -- while a later message of the key is being handled.
            seq = DEFAULT,
            attempts = 0,
            replay_count = i.replay_count + 1,
            available_at = now(),
            dead_at = NULL,
            headers = coalesce(i.headers, '{}'::jsonb) || jsonb_build_object(
                'x-replayed-at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                'x-replay-count', (i.replay_count + 1)::text)
        FROM (
            -- Locked here, and the status checked again once locked: a letter
            -- a concurrent replay took first is pending by then, and skipped.
            SELECT d.subscriber, d.message_id, d.attempts, d.last_error
            FROM postbox.select_dead_letters(replay_dead_letters.subscriber,
                     replay_dead_letters.message_ids, replay_dead_letters.error_like,
                     replay_dead_letters.type_name, replay_dead_letters.dead_since,
                     replay_dead_letters.dead_until, replay_dead_letters.max_rows) sel
            JOIN postbox.inbox d ON d.subscriber = sel.subscriber AND d.message_id = sel.message_id
            WHERE d.status = 'dead'
              AND replay_dead_letters.subscriber IS NOT NULL -- required: NULL replays nothing
            FOR UPDATE OF d
        ) old
        WHERE i.subscriber = old.subscriber AND i.message_id = old.message_id
        RETURNING i.subscriber, i.message_id, old.attempts, old.last_error
    ), logged AS (
        INSERT INTO postbox.replays (subscriber, message_id, attempts, last_error)
        SELECT r.subscriber, r.message_id, r.attempts, r.last_error FROM replayed r
        RETURNING 1
    )
    SELECT count(*)::integer FROM logged
$$;
-- +goose StatementEnd

-- Delete dead letters of one subscriber, with the same arguments and the
-- same selection as replay_dead_letters. Returns how many.
--   SELECT postbox.purge_dead_letters('inventory', error_like => 'no-route');
-- +goose StatementBegin
CREATE FUNCTION postbox.purge_dead_letters(
    subscriber  text,
    message_ids uuid[]      DEFAULT NULL,
    error_like  text        DEFAULT NULL,
    type_name   text        DEFAULT NULL,
    dead_since  timestamptz DEFAULT NULL,
    dead_until  timestamptz DEFAULT NULL,
    max_rows    integer     DEFAULT NULL)
RETURNS integer
LANGUAGE sql VOLATILE AS $$
    WITH purged AS (
        DELETE FROM postbox.inbox i
        USING (
            SELECT d.subscriber, d.message_id
            FROM postbox.select_dead_letters(purge_dead_letters.subscriber,
                     purge_dead_letters.message_ids, purge_dead_letters.error_like,
                     purge_dead_letters.type_name, purge_dead_letters.dead_since,
                     purge_dead_letters.dead_until, purge_dead_letters.max_rows) sel
            JOIN postbox.inbox d ON d.subscriber = sel.subscriber AND d.message_id = sel.message_id
            WHERE d.status = 'dead'
              AND purge_dead_letters.subscriber IS NOT NULL -- required: NULL purges nothing
            FOR UPDATE OF d
        ) old
        WHERE i.subscriber = old.subscriber AND i.message_id = old.message_id
        RETURNING 1
    )
    SELECT count(*)::integer FROM purged
$$;
-- +goose StatementEnd

DROP FUNCTION postbox.replay_count(jsonb);
DROP FUNCTION postbox.lock_order_partitions(text, smallint[]);
DROP FUNCTION postbox.release_runs(text, text[], integer, boolean);
DROP FUNCTION postbox.inbox_lock_key(text);
DROP FUNCTION postbox.key_hash(bytea);
DROP FUNCTION postbox.outbox_slot();
DROP FUNCTION postbox.utc_text(timestamptz);
DROP FUNCTION postbox.default_dedup_window();
ALTER TABLE postbox.subscribers RENAME COLUMN dedup_window TO retention;
DROP FUNCTION postbox.order_partitions();
