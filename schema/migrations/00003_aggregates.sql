-- +goose Up
-- The aggregator's state (package aggregate, and scattergather on top of
-- it).

-- One row per (aggregator, key): open while it collects parts, then kept as
-- a tombstone for the aggregator's Retention, so that a part redelivered or
-- arriving after completion is recognised as late instead of starting the
-- aggregate anew. Handlers lock the row (ON CONFLICT DO UPDATE) for the
-- length of their transaction, so the parts of one key are added one
-- transaction at a time and the one that completes it is unique.
CREATE TABLE postbox.aggregates (
    aggregator   text        NOT NULL,
    key          text        NOT NULL,
    -- how many distinct parts complete it, when Open set it; NULL: the
    -- aggregator's Count
    expected     integer,
    -- distinct parts received while open
    parts        integer     NOT NULL DEFAULT 0,
    -- parts that came once it was completed
    late_parts   integer     NOT NULL DEFAULT 0,
    -- when Sweep completes it with what arrived; NULL: never
    deadline     timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    timed_out    boolean     NOT NULL DEFAULT false,
    -- the ID of the message published on completion (NULL when none was)
    result_id    uuid,
    CONSTRAINT aggregates_pkey PRIMARY KEY (aggregator, key),
    CONSTRAINT aggregates_expected CHECK (expected > 0),
    CONSTRAINT aggregates_key CHECK (octet_length(key) BETWEEN 1 AND 1024)
);
-- Sweep: the open aggregates past their deadline, earliest first.
CREATE INDEX aggregates_due_idx ON postbox.aggregates (aggregator, deadline)
    WHERE completed_at IS NULL AND deadline IS NOT NULL;
-- Sweep: tombstones past the retention.
CREATE INDEX aggregates_completed_idx ON postbox.aggregates (aggregator, completed_at)
    WHERE completed_at IS NOT NULL;
-- Every part updates its aggregate's row: vacuum early and often, and
-- leave room for HOT updates.
ALTER TABLE postbox.aggregates SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);

-- The parts of the open aggregates, one row per distinct part (the
-- aggregator's PartID: a redelivered or repeated part is stored once);
-- deleted when their aggregate completes.
CREATE TABLE postbox.aggregate_parts (
    aggregator  text        NOT NULL,
    key         text        NOT NULL,
    part_id     text        NOT NULL,
    message_id  uuid        NOT NULL,
    topic       text        NOT NULL,
    type        text        NOT NULL DEFAULT '',
    message_key text,
    payload     bytea       NOT NULL,
    headers     jsonb,
    created_at  timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT aggregate_parts_pkey PRIMARY KEY (aggregator, key, part_id),
    CONSTRAINT aggregate_parts_aggregate_fkey FOREIGN KEY (aggregator, key)
        REFERENCES postbox.aggregates (aggregator, key) ON DELETE CASCADE,
    CONSTRAINT aggregate_parts_part_id CHECK (octet_length(part_id) BETWEEN 1 AND 1024)
);
ALTER TABLE postbox.aggregate_parts SET (autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);

-- +goose Down
DROP TABLE postbox.aggregate_parts;
DROP TABLE postbox.aggregates;
