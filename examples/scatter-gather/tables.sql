-- The example's own tables, beside the postbox schema.

-- Checkout's orders: one row per order, written in the transaction that
-- scatters its quote requests.
CREATE TABLE orders (
    id      text PRIMARY KEY,
    country text NOT NULL,
    items   integer NOT NULL
);

-- Where shipping delivers; Antarctica is not there yet.
CREATE TABLE shipping_zones (
    country     text PRIMARY KEY,
    cents_each  integer NOT NULL
);
INSERT INTO shipping_zones VALUES ('FR', 450), ('DE', 500), ('IT', 550);

-- Each service's effect: one row per quote it gave, written in the
-- transaction that sends it.
CREATE TABLE quotes_given (
    service  text    NOT NULL,
    order_id text    NOT NULL,
    cents    integer NOT NULL
);

-- The combined quotes, one per order, written by checkout's consumer of
-- the results queue.
CREATE TABLE quotes (
    order_id    text    NOT NULL,
    total_cents integer NOT NULL,
    sources     text    NOT NULL,
    timed_out   boolean NOT NULL
);

-- Quotes that came after their order's gather had completed.
CREATE TABLE late_quotes (
    order_id text NOT NULL,
    service  text NOT NULL
);
