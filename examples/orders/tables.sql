-- The example's own tables, next to the postbox schema in the same database.
-- Amounts are integer cents.

-- The catalogue the inventory service knows. DOCK-X1 is missing on purpose:
-- the storefront sells it before the catalogue sync brings it here, and the
-- program adds it later to "fix" the poison order.
CREATE TABLE products (
    sku      text    PRIMARY KEY,
    name     text    NOT NULL,
    reserved integer NOT NULL DEFAULT 0
);
INSERT INTO products (sku, name) VALUES
    ('KB-01',  'Keyboard'),
    ('MS-02',  'Mouse'),
    ('MN-27',  'Monitor 27"'),
    ('LP-14',  'Laptop 14"'),
    ('CB-USB', 'USB-C cable');

-- The order service's business row.
CREATE TABLE orders (
    id           text        PRIMARY KEY,
    customer     text        NOT NULL,
    total_amount bigint      NOT NULL,
    items        jsonb       NOT NULL,
    status       text        NOT NULL DEFAULT 'placed',
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Every message this program's producers write to the outbox, recorded in
-- the same transaction as the message itself. causation_id is the message
-- whose handler wrote this one (the causation-id header postbox sets).
-- Re-published duplicates are not recorded: they are not new messages.
CREATE TABLE message_log (
    message_id   uuid        PRIMARY KEY,
    topic        text        NOT NULL,
    is_queue     boolean     NOT NULL,
    payload      bytea       NOT NULL,
    causation_id uuid,
    logged_at    timestamptz NOT NULL DEFAULT now()
);

-- Effect tables: each handler writes one row per message it handles.
-- message_id is deliberately not unique, so a message handled twice would
-- show up in the summary as a duplicate instead of failing the handler.
CREATE TABLE reservations (
    message_id uuid    NOT NULL,
    order_id   text    NOT NULL,
    lines      integer NOT NULL
);
CREATE TABLE notifications (
    message_id uuid NOT NULL,
    order_id   text NOT NULL,
    customer   text NOT NULL,
    body       text NOT NULL
);
CREATE TABLE analytics_events (
    message_id uuid NOT NULL,
    topic      text NOT NULL
);
CREATE TABLE high_value_orders (
    message_id   uuid   NOT NULL,
    order_id     text   NOT NULL,
    total_amount bigint NOT NULL
);
CREATE TABLE shipments (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id uuid        NOT NULL,
    order_id   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per (subscriber, handled message) per effect row. The
-- process-order handler's effect is the shipment command it wrote, found
-- through that command's causation_id.
CREATE VIEW effects (subscriber, message_id) AS
          SELECT 'inventory', message_id FROM reservations
UNION ALL SELECT 'notifications', message_id FROM notifications
UNION ALL SELECT 'analytics', message_id FROM analytics_events
UNION ALL SELECT 'high-value', message_id FROM high_value_orders
UNION ALL SELECT 'process-order', causation_id FROM message_log WHERE topic = 'shipments'
UNION ALL SELECT 'shipments', message_id FROM shipments;

-- Every (subscriber, message) delivery the routing calls for: for a topic
-- message, each subscription whose pattern matches its topic and whose
-- filter matches its payload (the rule the relay applies, evaluated here
-- over postbox.subscriptions); for a queue send, the queue itself.
CREATE VIEW expected_deliveries (subscriber, message_id) AS
SELECT s.subscriber, m.message_id
FROM message_log m
JOIN postbox.subscriptions s
  ON NOT m.is_queue
 AND (s.topic_pattern = m.topic OR ('.' || m.topic) ~ s.topic_regex)
 AND (s.filter IS NULL OR postbox.payload_matches(m.payload, s.filter))
UNION ALL
SELECT m.topic, m.message_id
FROM message_log m
WHERE m.is_queue;
