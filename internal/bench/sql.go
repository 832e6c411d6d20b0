package bench

// The bench's own statements, beyond those of benchkit.Tables: like them
// outside the product's migrations, so sqlc (which compiles against those
// migrations) cannot check them; they are constants, never built from input.

// The raw drain pipeline's tables: what a hand-written queue would be, with
// the postbox drain's shape (an inbox table claimed with SKIP LOCKED, a
// processed table that remembers handled IDs).
const sqlSetupRaw = `
CREATE TABLE IF NOT EXISTS postbox_bench.raw_inbox (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscriber text        NOT NULL,
    message_id uuid        NOT NULL,
    key        text,
    payload    bytea       NOT NULL,
    headers    jsonb,
    created_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS postbox_bench.raw_processed (
    subscriber   text        NOT NULL,
    message_id   uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber, message_id)
);`

// sqlRawRelay moves up to $1 raw outbox rows into the raw inbox in one
// statement, as the postbox relay does.
const sqlRawRelay = `
WITH moved AS (
    DELETE FROM postbox_bench.raw_outbox o
    WHERE o.id IN (SELECT id FROM postbox_bench.raw_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
    RETURNING o.*)
INSERT INTO postbox_bench.raw_inbox (subscriber, message_id, key, payload, headers, created_at)
SELECT m.topic, m.message_id, m.key, m.payload, m.headers, m.created_at FROM moved m ORDER BY m.id`

// sqlRawClaim locks up to $1 raw deliveries.
const sqlRawClaim = `SELECT id, message_id FROM postbox_bench.raw_inbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`

// sqlRawFinish deletes handled raw deliveries and remembers their IDs.
const sqlRawFinish = `
WITH done AS (DELETE FROM postbox_bench.raw_inbox WHERE id = ANY ($1::bigint[]) RETURNING subscriber, message_id)
INSERT INTO postbox_bench.raw_processed (subscriber, message_id) SELECT subscriber, message_id FROM done`

// sqlInsertEffects writes one effect row per message ID, in one statement.
const sqlInsertEffects = `INSERT INTO postbox_bench.effects (subscriber, message_id) SELECT $1, unnest($2::text[])`

// sqlPreloadDelayed puts $2 deliveries of subscriber $1 that are due
// only in a day where a consumer leaves a delayed delivery once it has met
// it: parked, in the index a claim probes for due deliveries. Setup only,
// not timed.
const sqlPreloadDelayed = `
INSERT INTO postbox.parked (subscriber, message_id, part, seq, key_hash, reason, topic, type, payload,
                            available_at, created_at, enqueued_at)
SELECT $1, gen_random_uuid(), (g % 16)::smallint, nextval('postbox.inbox_seq'), g, 'delayed', 'bench.backlog',
       'order.created',
       convert_to('{"order_id":' || g || ',"customer":"c-' || (g % 1000) || '","amount_cents":1234,"currency":"EUR"}', 'UTF8'),
       now() + interval '1 day', now(), now()
FROM generate_series(1, $2::integer) g`

// sqlPreloadDue puts $2 due deliveries of subscriber $1 into the inbox
// stream, as the relay would have (for a subscriber with no consumer).
// Setup only, not timed.
const sqlPreloadDue = `
INSERT INTO postbox.inbox (subscriber, part, message_id, key_hash, topic, type, payload, available_at, created_at)
SELECT $1, (g % 16)::smallint, gen_random_uuid(), g, 'bench.backlog', 'order.created',
       convert_to('{"order_id":' || g || ',"customer":"c-' || (g % 1000) || '","amount_cents":1234,"currency":"EUR"}', 'UTF8'),
       now(), now()
FROM generate_series(1, $2::integer) g`

// sqlCountPending counts a subscriber's deliveries not yet handled.
const sqlCountPending = `SELECT ready + waiting FROM postbox.queue_depths WHERE subscriber = $1`
