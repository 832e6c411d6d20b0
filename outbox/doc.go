// Package outbox writes messages inside the caller's transaction.
//
// Publish, Send, PublishBatch and SendBatch take any postbox.DBTX — a pgx.Tx, *pgx.Conn
// or *pgxpool.Pool — and insert into postbox.outbox through it. Pass the
// business transaction and the message exists if and only if that
// transaction commits; nothing is visible to the relay before the commit,
// and a rollback leaves nothing behind.
//
//	tx, _ := pool.Begin(ctx)
//	_, _ = tx.Exec(ctx, `INSERT INTO orders (id, total) VALUES ($1, $2)`, id, total)
//	payload, _ := postbox.JSON(order)
//	_ = outbox.Publish(ctx, tx, &postbox.Message{Topic: "order.created", Key: id, Payload: payload})
//	_ = tx.Commit(ctx)
//
// Messages are validated before anything is written (names, payload size,
// headers; see postbox.Limits); the outbox table's CHECK constraints hold
// the limits the relay and consumers rely on, so a bad row written by hand
// fails at its INSERT. Publish sends no NOTIFY: a NOTIFY takes a global lock
// at commit and would serialize producers. The relay polls.
//
// Per-key order holds for overlapping producers: Publish and Send of a
// message with a key take a transaction-level advisory lock on the key's
// hash in the same statement, before the row's id is drawn, and
// PublishBatch takes its keys' locks sorted, in one statement, before the
// COPY. A second transaction publishing the same key waits for the first
// to end, so per key the outbox ids, and the order of delivery, follow the
// commit order of the publishing transactions. Two transactions that
// publish several keys each, in different orders, can deadlock (PostgreSQL
// detects it and aborts one): publish a transaction's keys in a fixed
// order, or with one PublishBatch.
//
// Rows go straight into the outbox's current time slot (a partition the
// relay truncates once it has emptied it), without partition routing.
//
// CreatedAt is set by the database to the publishing transaction's start;
// a value set by the caller is ignored.
package outbox
