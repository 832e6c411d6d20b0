-- postbox least-privilege roles, for the schema of migration {{.Version}}.
-- Printed by `postbox grants`; `postbox grants --apply` runs it. Run it as
-- the owner of the postbox schema (or a superuser) with CREATEROLE, again
-- after every upgrade (it is idempotent). Grant the group roles to your
-- services' login roles:
--
--   CREATE ROLE orders_api LOGIN PASSWORD '...' IN ROLE {{.Producer}};
--   CREATE ROLE orders_worker LOGIN PASSWORD '...' IN ROLE {{.Consumer}}, {{.Producer}};
--   CREATE ROLE postbox_relay_login LOGIN PASSWORD '...' IN ROLE {{.Relay}};
--   CREATE ROLE ops LOGIN PASSWORD '...' IN ROLE {{.Operator}};
--
-- Every postbox function runs with its caller's privileges (none is
-- SECURITY DEFINER), so what a role may do is decided by the table
-- privileges below alone: calling postbox.replay_dead_letters as a producer
-- fails on postbox.dead_letters. No role needs a SECURITY DEFINER function.
-- Advisory locks (partition, key and janitor locks), NOTIFY and LISTEN need
-- no privilege; pg_locks, which the relay reads to move its marks, is
-- readable by everyone.
BEGIN;

DO $roles$
BEGIN
    {{- range .Roles}}
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{{.}}') THEN
        CREATE ROLE {{.}} NOLOGIN;
    END IF;
    {{- end}}
END
$roles$;

-- Everyone: the schema, and the migrations table (the binary checks that
-- the schema is migrated before it starts).
GRANT USAGE ON SCHEMA postbox TO {{join .Roles ", "}};
GRANT SELECT ON public.{{.VersionTable}} TO {{join .Roles ", "}};

-- {{.Producer}}: outbox.Publish, Send, PublishBatch and SendBatch write
-- into the outbox's current slot table directly (COPY for the batches) and
-- draw ids from its sequence; nothing else. It cannot read the outbox.
GRANT INSERT ON postbox.outbox, {{.OutboxSlots}} TO {{.Producer}};
GRANT USAGE ON SEQUENCE postbox.outbox_seq TO {{.Producer}};

-- {{.Relay}}: claims outbox rows (FOR UPDATE, so UPDATE too), deletes what
-- it moves, routes by subscribers, subscriptions and routing rules, drops
-- IDs handled within their dedup window (processed), appends to the inbox
-- stream, writes no-route and quarantined dead letters (only the columns an
-- ON CONFLICT needs are readable: no payloads), moves scheduled messages on
-- the Sink path, TRUNCATEs emptied outbox and stream slots after checking
-- them under a lock (so it reads the slot tables and the cursors), reads
-- both sequences' positions, and runs the janitor (DELETE on processed).
GRANT SELECT, INSERT, UPDATE, DELETE ON postbox.outbox TO {{.Relay}};
GRANT SELECT, TRUNCATE ON {{.OutboxSlots}} TO {{.Relay}};
GRANT SELECT, USAGE ON SEQUENCE postbox.outbox_seq, postbox.inbox_seq TO {{.Relay}};
GRANT INSERT, SELECT (subscriber) ON postbox.inbox TO {{.Relay}}; -- INSERT ... RETURNING subscriber
GRANT SELECT, TRUNCATE ON {{.InboxSlots}} TO {{.Relay}};
GRANT SELECT ON postbox.inbox_cursors, postbox.subscribers, postbox.subscriptions, postbox.routes TO {{.Relay}};
GRANT SELECT, DELETE ON postbox.processed TO {{.Relay}};
GRANT INSERT ON postbox.dead_letters TO {{.Relay}};
GRANT SELECT (subscriber, message_id), UPDATE (last_error) ON postbox.dead_letters TO {{.Relay}};
GRANT SELECT, INSERT, DELETE ON postbox.scheduled TO {{.Relay}};

-- {{.Consumer}}: claims deliveries (reads the stream and its cursors),
-- completes them (moves the cursors, remembers handled IDs in processed),
-- fails them (parks them for a retry, or makes them dead letters; of the
-- dead letters it reads only the columns that tell whether a key waits
-- behind one), and reads its subscriber's settings. It cannot publish
-- (grant {{.Producer}} as well for handlers that do), read other dead
-- letters' payloads, replay or purge.
GRANT SELECT ON postbox.inbox, postbox.subscribers TO {{.Consumer}};
GRANT SELECT, UPDATE ON postbox.inbox_cursors TO {{.Consumer}};
GRANT SELECT, INSERT, UPDATE, DELETE ON postbox.parked TO {{.Consumer}};
GRANT INSERT ON postbox.dead_letters TO {{.Consumer}};
GRANT SELECT (subscriber, message_id, key) ON postbox.dead_letters TO {{.Consumer}};
GRANT SELECT, INSERT ON postbox.processed TO {{.Consumer}};

-- {{.Operator}}: dead letters (dlq: list, count, replay, purge; a replay
-- parks letters again, records itself in replays, and puts the relay's
-- quarantined rows back into the outbox), routing (dispatcher: declaring a
-- subscriber creates its cursors, drawing from the stream's sequence),
-- stats, the admin pages and the doctor (pg_monitor, to see every role's
-- sessions). It reads every postbox table, and neither relays nor consumes.
GRANT SELECT ON postbox.outbox, postbox.inbox, postbox.inbox_cursors, postbox.processed, postbox.scheduled,
    postbox.queue_depths TO {{.Operator}};
GRANT SELECT, USAGE ON SEQUENCE postbox.outbox_seq, postbox.inbox_seq TO {{.Operator}};
GRANT INSERT ON postbox.outbox TO {{.Operator}};
GRANT INSERT ON postbox.inbox_cursors TO {{.Operator}};
GRANT SELECT, DELETE ON postbox.dead_letters TO {{.Operator}};
GRANT SELECT, INSERT, UPDATE ON postbox.parked TO {{.Operator}};
GRANT SELECT, INSERT ON postbox.replays TO {{.Operator}};
GRANT SELECT, INSERT, UPDATE, DELETE ON postbox.subscribers, postbox.subscriptions, postbox.routes TO {{.Operator}};
GRANT pg_monitor TO {{.Operator}};

COMMIT;
