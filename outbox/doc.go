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
// headers; see postbox.Limits). Publish sends no NOTIFY: a NOTIFY takes a
// global lock at commit and would serialize producers. The relay polls.
//
// CreatedAt is set by the database to the publishing transaction's start;
// a value set by the caller is ignored.
package outbox
