package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/db"
)

// SQLExecer is what the database/sql producers need: *sql.Tx, *sql.Conn
// and *sql.DB satisfy it, and so does anything built on them — sqlx.Tx,
// a GORM transaction's Statement.ConnPool, bun.Tx's embedded *sql.Tx —
// through any PostgreSQL driver (pgx's stdlib, lib/pq). Pass the
// business transaction: the message exists if and only if it commits.
type SQLExecer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// PublishSQL is Publish through a database/sql transaction: the same
// validation, the same row, the same per-key lock.
func PublishSQL(ctx context.Context, db SQLExecer, msg *postbox.Message) error {
	return defaultOutbox.PublishSQL(ctx, db, msg)
}

// SendSQL is Send through a database/sql transaction.
func SendSQL(ctx context.Context, db SQLExecer, msg *postbox.Message) error {
	return defaultOutbox.SendSQL(ctx, db, msg)
}

// PublishBatchSQL is PublishBatch through a database/sql transaction.
// database/sql has no COPY: the rows go in multi-row INSERTs, up to
// sqlBatchRows a statement.
func PublishBatchSQL(ctx context.Context, db SQLExecer, msgs []*postbox.Message) error {
	return defaultOutbox.PublishBatchSQL(ctx, db, msgs)
}

// SendBatchSQL is SendBatch through a database/sql transaction; see
// PublishBatchSQL.
func SendBatchSQL(ctx context.Context, db SQLExecer, msgs []*postbox.Message) error {
	return defaultOutbox.SendBatchSQL(ctx, db, msgs)
}

// PublishSQL is the package-level PublishSQL with o's limits.
func (o Outbox) PublishSQL(ctx context.Context, db SQLExecer, msg *postbox.Message) error {
	return o.insertSQL(ctx, db, msg, false)
}

// SendSQL is the package-level SendSQL with o's limits.
func (o Outbox) SendSQL(ctx context.Context, db SQLExecer, msg *postbox.Message) error {
	return o.insertSQL(ctx, db, msg, true)
}

// PublishBatchSQL is the package-level PublishBatchSQL with o's limits.
// Every message is validated before any is written.
func (o Outbox) PublishBatchSQL(ctx context.Context, db SQLExecer, msgs []*postbox.Message) error {
	return o.insertManySQL(ctx, db, msgs, false)
}

// SendBatchSQL is the package-level SendBatchSQL with o's limits. Every
// message is validated before any is written.
func (o Outbox) SendBatchSQL(ctx context.Context, db SQLExecer, msgs []*postbox.Message) error {
	return o.insertManySQL(ctx, db, msgs, true)
}

// insertSQL is insert through database/sql: the same slot statements.
func (o Outbox) insertSQL(ctx context.Context, db SQLExecer, msg *postbox.Message, queue bool) error {
	r, err := o.prepare(ctx, msg, queue)
	if err != nil {
		return err
	}
	slot := slotAt(time.Now())
	query := insertSQL[slot]
	if r.Key != nil {
		query = insertKeyedSQL[slot]
	}
	if _, err := db.ExecContext(ctx, query, r.sqlArgs()...); err != nil {
		return fmt.Errorf("outbox: insert message %s: %w", msg.ID, err)
	}
	return nil
}

// sqlBatchRows bounds the rows of one multi-row INSERT: PostgreSQL takes
// at most 65535 parameters a statement, and a row has nine.
const sqlBatchRows = 65535 / 9

// insertManySQL is copy through database/sql: the keys' locks in one
// statement (the LockKeys query, sorted), then multi-row INSERTs into the
// slot of the moment, which draw the ids after the locks as COPY does.
func (o Outbox) insertManySQL(ctx context.Context, dbx SQLExecer, msgs []*postbox.Message, queue bool) error {
	rows, keyHashes, err := o.prepareBatch(ctx, msgs, queue)
	if err != nil {
		return err
	}
	if len(keyHashes) > 0 {
		if _, err := dbx.ExecContext(ctx, db.LockKeys, intArray(keyHashes)); err != nil {
			return fmt.Errorf("outbox: lock keys: %w", err)
		}
	}
	slot := slotAt(time.Now())
	for chunk := range slices.Chunk(rows, sqlBatchRows) {
		args := make([]any, 0, 9*len(chunk))
		for i := range chunk {
			args = append(args, chunk[i].sqlArgs()...)
		}
		if _, err := dbx.ExecContext(ctx, multiInsertSQL(slot, len(chunk)), args...); err != nil {
			return fmt.Errorf("outbox: insert %d messages: %w", len(msgs), err)
		}
	}
	return nil
}

// sqlArgs are r's parameters for insertSQL, insertKeyedSQL and
// multiInsertSQL, in that order. Headers go as JSON text rather than
// bytes, which some drivers (lib/pq) would send as bytea.
func (r *row) sqlArgs() []any {
	var headers any
	if r.Headers != nil {
		headers = string(r.Headers)
	}
	return []any{r.MessageID, r.KeyHash, r.IsQueue, r.Topic, r.Type, r.Key, r.Payload, headers, r.DeliverAt}
}

// multiInsertSQL is the INSERT of n rows into slot's table: copyColumns,
// the slot a constant and the other nine columns parameters, typed as in
// insertKeyedSQL so that no driver has to guess.
func multiInsertSQL(slot, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "INSERT INTO %s (%s) VALUES ", slotTable[slot].Sanitize(), strings.Join(copyColumns, ", "))
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		p := 9 * i
		fmt.Fprintf(&b, "(%d, $%d::uuid, $%d::integer, $%d::boolean, $%d::text, $%d::text, $%d::text, $%d::bytea, $%d::jsonb, $%d::timestamptz)",
			slot, p+1, p+2, p+3, p+4, p+5, p+6, p+7, p+8, p+9)
	}
	return b.String()
}

// intArray is an integer[] parameter as its text form, which every driver
// passes through: database/sql has no array type of its own.
func intArray(v []int32) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, n := range v {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(int64(n), 10))
	}
	b.WriteByte('}')
	return b.String()
}
