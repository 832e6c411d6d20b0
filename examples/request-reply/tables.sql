-- The example's own tables, beside the postbox schema.

-- The inventory service's stock.
CREATE TABLE stock (
    sku     text    PRIMARY KEY,
    on_hand integer NOT NULL
);
INSERT INTO stock (sku, on_hand)
SELECT 'SKU-' || lpad(n::text, 2, '0'), n * 3 FROM generate_series(1, 12) n;

-- The inventory service's effect: one row per stock query it answered,
-- written in the transaction that sends the reply.
CREATE TABLE stock_queries (
    request_id uuid NOT NULL,
    sku        text NOT NULL
);

-- What checkout's Requests received in time, written by the caller once
-- Request returned.
CREATE TABLE answers (
    request_id uuid    NOT NULL,
    requester  text    NOT NULL,
    sku        text    NOT NULL,
    on_hand    integer NOT NULL
);

-- Checkout's reservations: business rows written in the transaction that
-- sends their stock query asynchronously (Requester.Send).
CREATE TABLE reservations (
    request_id uuid    PRIMARY KEY,
    sku        text    NOT NULL,
    qty        integer NOT NULL
);

-- The replies checkout's Handler received, in their own transactions:
-- 'async' for a reservation's query, 'late' for a Request that gave up.
CREATE TABLE handled_replies (
    reply_id   uuid    NOT NULL,
    request_id uuid    NOT NULL,
    kind       text    NOT NULL,
    sku        text    NOT NULL,
    on_hand    integer NOT NULL
);
