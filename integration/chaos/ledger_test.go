package chaos

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The suite's own tables, beside postbox's:
//
//   - chaos.sent: what producers committed, written in the transaction that
//     publishes the message. A retry of an ambiguous commit whose first try
//     had committed finds its row and counts an attempt: that message is in
//     the outbox twice.
//   - chaos.heads: per (subscriber, key), how many effects have committed.
//     The handler's upsert locks the row until its transaction ends, so
//     pos below is the commit order of a key's effects, whatever runs them.
//   - chaos.effects: one row per handler run that committed.
const ledgerSchema = `
CREATE SCHEMA chaos;
CREATE TABLE chaos.sent (
    message_id uuid    NOT NULL,
    key        text    NOT NULL,
    seq        integer NOT NULL,
    attempts   integer NOT NULL DEFAULT 1,
    sent_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT sent_pkey PRIMARY KEY (message_id),
    CONSTRAINT sent_key_seq UNIQUE (key, seq)
);
CREATE TABLE chaos.heads (
    subscriber text    NOT NULL,
    key        text    NOT NULL,
    n          integer NOT NULL,
    CONSTRAINT heads_pkey PRIMARY KEY (subscriber, key)
);
CREATE TABLE chaos.effects (
    id         bigserial NOT NULL,
    subscriber text      NOT NULL,
    key        text      NOT NULL,
    seq        integer   NOT NULL,
    message_id uuid      NOT NULL,
    pos        integer   NOT NULL,
    attempt    integer   NOT NULL,
    consumer   text      NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT effects_pkey PRIMARY KEY (id)
);
CREATE INDEX effects_message_idx ON chaos.effects (subscriber, message_id);`

// sqlRecordSent is the producer's business row, in its publishing
// transaction: $1 message IDs, $2 keys, $3 seqs.
const sqlRecordSent = `INSERT INTO chaos.sent (message_id, key, seq)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[])
ON CONFLICT (message_id) DO UPDATE SET attempts = chaos.sent.attempts + 1`

// sqlEffect is what a handler writes for one delivery: $1 subscriber, $2
// key, $3 seq, $4 message ID, $5 attempt, $6 consumer process.
const sqlEffect = `WITH h AS (
    INSERT INTO chaos.heads AS h (subscriber, key, n) VALUES ($1, $2, 1)
    ON CONFLICT (subscriber, key) DO UPDATE SET n = h.n + 1
    RETURNING n)
INSERT INTO chaos.effects (subscriber, key, seq, message_id, pos, attempt, consumer)
SELECT $1, $2, $3, $4, n, $5, $6 FROM h`

// sqlExpected lists what must have an effect: every message sent, for
// chaos-a; those the filter passes, for chaos-b.
const sqlExpected = `SELECT 'chaos-a'::text AS subscriber, message_id, key, seq FROM chaos.sent
    UNION ALL
    SELECT 'chaos-b', message_id, key, seq FROM chaos.sent WHERE seq % 3 <> 0`

// sqlProgress is how far the run is: distinct effects, what postbox still
// has pending, and the outbox.
const sqlProgress = `SELECT (SELECT count(*) FROM (SELECT DISTINCT subscriber, message_id FROM chaos.effects) e),
    (SELECT count(*) FROM postbox.outbox),
    (SELECT count(*) FROM postbox.inbox_cursors c
        JOIN postbox.inbox r ON r.subscriber = c.subscriber AND r.part = c.part AND r.seq >= c.next_seq),
    (SELECT count(*) FROM postbox.parked),
    (SELECT count(*) FROM postbox.dead_letters)`

type progress struct {
	effects, outbox, stream, parked, dead int64
}

func readProgress(ctx context.Context, db *pgxpool.Pool) (progress, error) {
	var p progress
	err := db.QueryRow(ctx, sqlProgress).Scan(&p.effects, &p.outbox, &p.stream, &p.parked, &p.dead)
	return p, err
}

// tally is the verdict of the ledger.
type tally struct {
	sent, expected, effects                  int64
	lost, duplicated, outOfOrder, unexpected int64
	// committedTwice: ambiguous commits whose first try had committed, so
	// the retry put a second copy of the message into the outbox.
	committedTwice int64
	retried        int64 // effects of a delivery's later attempt (injected failures)
	dead           int64
	samples        []string
}

const sqlTally = `WITH expected AS (` + sqlExpected + `),
got AS (SELECT subscriber, message_id, count(*) AS n FROM chaos.effects GROUP BY 1, 2),
ordered AS (
    SELECT subscriber, key, seq, pos,
           max(seq) OVER (PARTITION BY subscriber, key ORDER BY pos
                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before,
           row_number() OVER (PARTITION BY subscriber, key, seq ORDER BY pos) AS occurrence
    FROM chaos.effects)
SELECT (SELECT count(*) FROM chaos.sent),
       (SELECT count(*) FROM expected),
       (SELECT count(*) FROM chaos.effects),
       (SELECT count(*) FROM expected e
        WHERE NOT EXISTS (SELECT 1 FROM got g WHERE g.subscriber = e.subscriber AND g.message_id = e.message_id)),
       (SELECT coalesce(sum(n - 1), 0) FROM got),
       (SELECT count(*) FROM ordered WHERE occurrence = 1 AND seq < before),
       (SELECT count(*) FROM got g
        WHERE NOT EXISTS (SELECT 1 FROM expected e WHERE e.subscriber = g.subscriber AND e.message_id = g.message_id)),
       (SELECT coalesce(sum(attempts - 1), 0) FROM chaos.sent),
       (SELECT count(*) FROM chaos.effects WHERE attempt > 1),
       (SELECT count(*) FROM postbox.dead_letters)`

// sqlSamples shows a few of each anomaly, for the report.
const sqlSamples = `WITH expected AS (` + sqlExpected + `),
ordered AS (
    SELECT subscriber, key, seq, pos, consumer, at,
           max(seq) OVER (PARTITION BY subscriber, key ORDER BY pos
                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before,
           row_number() OVER (PARTITION BY subscriber, key, seq ORDER BY pos) AS occurrence
    FROM chaos.effects)
(SELECT format('lost: %s %s seq %s (message %s)', e.subscriber, e.key, e.seq, e.message_id) FROM expected e
 WHERE NOT EXISTS (SELECT 1 FROM chaos.effects f WHERE f.subscriber = e.subscriber AND f.message_id = e.message_id)
 ORDER BY e.subscriber, e.key, e.seq LIMIT 10)
UNION ALL
(SELECT format('duplicated: %s %s seq %s: effect %s of it, by %s at %s', subscriber, key, seq, occurrence, consumer, at)
 FROM ordered WHERE occurrence > 1 ORDER BY subscriber, key, seq LIMIT 10)
UNION ALL
(SELECT format('out of order: %s %s seq %s committed after seq %s (by %s at %s)', subscriber, key, seq, before, consumer, at)
 FROM ordered WHERE occurrence = 1 AND seq < before ORDER BY subscriber, key, pos LIMIT 10)
UNION ALL
(SELECT format('dead letter: %s %s: %s', subscriber, message_id, last_error) FROM postbox.dead_letters LIMIT 10)`

func readTally(ctx context.Context, db *pgxpool.Pool) (tally, error) {
	var t tally
	err := db.QueryRow(ctx, sqlTally).Scan(&t.sent, &t.expected, &t.effects, &t.lost, &t.duplicated,
		&t.outOfOrder, &t.unexpected, &t.committedTwice, &t.retried, &t.dead)
	if err != nil {
		return t, fmt.Errorf("tally: %w", err)
	}
	if t.lost+t.duplicated+t.outOfOrder+t.unexpected+t.dead == 0 {
		return t, nil
	}
	rows, err := db.Query(ctx, sqlSamples)
	if err != nil {
		return t, fmt.Errorf("tally samples: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return t, err
		}
		t.samples = append(t.samples, s)
	}
	return t, rows.Err()
}

func (t tally) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sent %d messages (%d committed twice by a retried ambiguous commit); effects: %d expected, %d committed (%d after a failed attempt)\n",
		t.sent, t.committedTwice, t.expected, t.effects, t.retried)
	fmt.Fprintf(&b, "lost %d, duplicated %d, out of order %d, never sent %d, dead letters %d",
		t.lost, t.duplicated, t.outOfOrder, t.unexpected, t.dead)
	for _, s := range t.samples {
		b.WriteString("\n  " + s)
	}
	return b.String()
}

// sqlAnomalousKeys are a few (subscriber, key) pairs with an anomaly.
const sqlAnomalousKeys = `WITH ordered AS (
    SELECT subscriber, key, seq, pos,
           max(seq) OVER (PARTITION BY subscriber, key ORDER BY pos
                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before,
           row_number() OVER (PARTITION BY subscriber, key, seq ORDER BY pos) AS occurrence
    FROM chaos.effects)
SELECT DISTINCT subscriber, key FROM ordered WHERE occurrence > 1 OR seq < before ORDER BY 1, 2 LIMIT 2`

// sqlKeyHistory is one key's story for one subscriber, in time order: what
// the producers committed, the inbox stream's deliveries, and the effects
// in commit order. $1 subscriber, $2 key.
const sqlKeyHistory = `SELECT at, line FROM (
    SELECT s.sent_at AS at, format('sent     seq %s id %s (committed %s times)', s.seq, s.message_id, s.attempts) AS line
    FROM chaos.sent s WHERE s.key = $2
    UNION ALL
    SELECT i.enqueued_at, format('inbox    seq %s id %s part %s inbox seq %s', s.seq, i.message_id, i.part, i.seq)
    FROM postbox.inbox i JOIN chaos.sent s ON s.message_id = i.message_id
    WHERE i.subscriber = $1 AND i.key = $2
    UNION ALL
    SELECT e.at, format('effect   seq %s id %s pos %s attempt %s by %s', e.seq, e.message_id, e.pos, e.attempt, e.consumer)
    FROM chaos.effects e WHERE e.subscriber = $1 AND e.key = $2) h
ORDER BY at`

// keyHistories describes a few keys with anomalies.
func keyHistories(ctx context.Context, db *pgxpool.Pool) string {
	rows, err := db.Query(ctx, sqlAnomalousKeys)
	if err != nil {
		return err.Error()
	}
	type pair struct{ sub, key string }
	var pairs []pair
	for rows.Next() {
		var p pair
		if err := rows.Scan(&p.sub, &p.key); err != nil {
			return err.Error()
		}
		pairs = append(pairs, p)
	}
	rows.Close()
	var b strings.Builder
	for _, p := range pairs {
		fmt.Fprintf(&b, "history of %s %s:\n", p.sub, p.key)
		rows, err := db.Query(ctx, sqlKeyHistory, p.sub, p.key)
		if err != nil {
			return err.Error()
		}
		for rows.Next() {
			var at time.Time
			var line string
			if err := rows.Scan(&at, &line); err != nil {
				return err.Error()
			}
			fmt.Fprintf(&b, "  %s %s\n", at.Format("15:04:05.000000"), line)
		}
		rows.Close()
	}
	return b.String()
}
