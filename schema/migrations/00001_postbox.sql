-- +goose Up
-- postbox: transactional outbox, relay, inbox and dead letters.
-- Every object lives in schema postbox; docs/architecture.md explains the shape.

CREATE SCHEMA IF NOT EXISTS postbox;

-- The outbox holds committed messages not yet relayed, and nothing else: the
-- relay deletes what it moves. Only the primary key is indexed, because every
-- index here is paid by every producer transaction. Duplicate message IDs are
-- stopped later, at the inbox's (subscriber, message_id) key.
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

-- Relay partitions: a relay locks rows of this table (FOR UPDATE SKIP LOCKED)
-- for the length of its transaction and moves only outbox rows whose
-- key_hash % 16 it holds. Two relays therefore never move messages of the
-- same key at once, which keeps per-key order without leases or a leader.
CREATE TABLE postbox.relay_partitions (
    partition integer NOT NULL,
    CONSTRAINT relay_partitions_pkey PRIMARY KEY (partition),
    CONSTRAINT relay_partitions_range CHECK (partition >= 0 AND partition < 16)
);
INSERT INTO postbox.relay_partitions (partition) SELECT generate_series(0, 15);

-- A subscriber is a named consumer group. A queue is a subscriber that takes
-- point-to-point sends addressed to its name; a topic subscriber receives
-- what its subscriptions match. Retry settings live here so that every
-- consumer process, the binary and plain SQL agree on them.
CREATE TABLE postbox.subscribers (
    name                text             NOT NULL,
    kind                text             NOT NULL,
    partitions          integer          NOT NULL DEFAULT 16,
    max_attempts        integer          NOT NULL DEFAULT 10,
    backoff_initial     interval         NOT NULL DEFAULT '1 second',
    backoff_max         interval         NOT NULL DEFAULT '5 minutes',
    backoff_multiplier  double precision NOT NULL DEFAULT 2,
    retention           interval         NOT NULL DEFAULT '7 days',
    created_at          timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT subscribers_pkey PRIMARY KEY (name),
    CONSTRAINT subscribers_kind CHECK (kind IN ('queue', 'topic')),
    CONSTRAINT subscribers_partitions CHECK (partitions BETWEEN 1 AND 4096),
    CONSTRAINT subscribers_max_attempts CHECK (max_attempts >= 1),
    CONSTRAINT subscribers_backoff_multiplier CHECK (backoff_multiplier >= 1)
);

-- topic_regex is derived from topic_pattern by the dispatcher (validated
-- segments, '*' and '#'); it is NULL for an exact topic name, which the relay
-- then matches by equality.
CREATE TABLE postbox.subscriptions (
    subscriber    text        NOT NULL,
    topic_pattern text        NOT NULL,
    topic_regex   text,
    filter        jsonpath,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subscriptions_pkey PRIMARY KEY (subscriber, topic_pattern),
    CONSTRAINT subscriptions_subscriber_fkey FOREIGN KEY (subscriber)
        REFERENCES postbox.subscribers (name) ON DELETE CASCADE
);

-- The inbox holds deliveries still to handle (pending) and dead letters
-- (dead). A handled delivery is deleted and remembered in postbox.processed,
-- so the claim index only ever covers live work. No foreign key to
-- subscribers: a send to an undeclared queue is kept here as a dead letter
-- (last_error 'no-route') and can be replayed once the queue exists.
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

-- Handled deliveries, kept for the subscriber's dedup window (retention) so a
-- message ID presented again, by the relay or by an outside sender, is not
-- handled twice. Narrow on purpose: it is written once per handled message.
CREATE TABLE postbox.processed (
    subscriber   text        NOT NULL,
    message_id   uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT processed_pkey PRIMARY KEY (subscriber, message_id)
);
-- BRIN: rows arrive in processed_at order, and the janitor only needs ranges.
CREATE INDEX processed_at_brin ON postbox.processed USING brin (processed_at);

-- One row per replay, for the record.
CREATE TABLE postbox.replays (
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    subscriber  text        NOT NULL,
    message_id  uuid        NOT NULL,
    replayed_at timestamptz NOT NULL DEFAULT now(),
    last_error  text,
    attempts    integer     NOT NULL,
    CONSTRAINT replays_pkey PRIMARY KEY (id)
);
CREATE INDEX replays_subscriber_idx ON postbox.replays (subscriber, replayed_at);

-- Queue tables churn: vacuum them early and often instead of after 20% of
-- the table has died.
ALTER TABLE postbox.outbox SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0, fillfactor = 100);
ALTER TABLE postbox.inbox SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0, fillfactor = 90);
ALTER TABLE postbox.processed SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);

-- A subscription filter is a SQL/JSON path over the payload. A path that
-- yields a boolean (a predicate such as '$.total >= 10000') decides by that
-- boolean; any other path matches when it yields something (a filter such as
-- '$.total ? (@ >= 10000)'). A payload that is not JSON matches no filter.
-- +goose StatementBegin
CREATE FUNCTION postbox.payload_matches(payload bytea, filter jsonpath)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    doc    jsonb;
    result jsonb;
BEGIN
    -- A payload the filter cannot read matches nothing, and must never fail
    -- the relay statement: that would stop every relay at this row.
    -- program_limit_exceeded covers JSON nested past the stack depth.
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

-- The head (earliest pending delivery) of each key of a subscriber after
-- after_key, in key order, at most visit_limit of them: a skip scan of
-- inbox_key_idx, one index probe per key however many deliveries wait behind
-- each head. The consumer fills short batches from it, walking on from where
-- it stopped so every key gets its turn. A function only for its SET clause:
-- the planner prices a recursive walk over a large inbox in the millions and
-- JIT-compiled it, 372 ms of compiling for a 0.09 ms walk (auto_explain, a
-- million rows waiting); with jit off here and nowhere else.
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

-- Which of message_ids a subscriber handled within its dedup window. A
-- function only for its SET clause: planned inside a claim, the same lookup
-- followed the statistics of a queue table, which are never right for long
-- (empty at night, large by noon), and became a hash of the whole processed
-- table on every claim: 34 ms instead of 1 ms with 100,000 handled IDs
-- (EXPLAIN ANALYZE of the generic plan). Here only the primary key can serve.
-- +goose StatementBegin
CREATE FUNCTION postbox.processed_among(subscriber text, message_ids uuid[])
RETURNS SETOF uuid
LANGUAGE sql STABLE
SET enable_seqscan = off
SET jit = off
AS $$
    SELECT p.message_id
    FROM postbox.processed p
    WHERE p.subscriber = processed_among.subscriber
      AND p.message_id = ANY (processed_among.message_ids)
$$;
-- +goose StatementEnd

-- Operators' views.
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

-- The dead letters a filter selects, oldest dead first: the one definition
-- that replay_dead_letters, purge_dead_letters and the dlq package's list and
-- count share. NULL means "any" for every argument; a NULL subscriber
-- selects every subscriber's (listing only: replay and purge require one).
-- A plain SQL function, so the planner inlines it and uses the indexes.
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

-- +goose Down
DROP FUNCTION postbox.purge_dead_letters(text, uuid[], text, text, timestamptz, timestamptz, integer);
DROP FUNCTION postbox.replay_dead_letters(text, uuid[], text, text, timestamptz, timestamptz, integer);
DROP FUNCTION postbox.select_dead_letters(text, uuid[], text, text, timestamptz, timestamptz, integer);
DROP VIEW postbox.queue_depths;
DROP VIEW postbox.dead_letters;
DROP FUNCTION postbox.payload_matches(bytea, jsonpath);
DROP FUNCTION postbox.walk_key_heads(text, text, integer);
DROP FUNCTION postbox.processed_among(text, uuid[]);
DROP TABLE postbox.replays;
DROP TABLE postbox.processed;
DROP TABLE postbox.inbox;
DROP TABLE postbox.subscriptions;
DROP TABLE postbox.subscribers;
DROP TABLE postbox.relay_partitions;
DROP TABLE postbox.outbox;
-- RESTRICT: a schema that still holds objects of the user's is left alone.
DROP SCHEMA postbox RESTRICT;
