package benchkit

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// PinDatabase is where PinHorizon holds its transaction: another database
// of the same cluster, as an analytics query, a forgotten psql session or a
// pg_dump elsewhere would.
const PinDatabase = "postbox_bench_pin"

// ErrNoPin is returned when the pinning transaction cannot be opened.
var ErrNoPin = errors.New("benchkit: no other database to hold a transaction in")

// PinHorizon connects to PinDatabase on the server of e.URL (creating the
// database if needed) and holds a REPEATABLE READ transaction with a
// transaction ID open there until stop is called: it keeps vacuum,
// everywhere on the cluster, from removing any row deleted after it began.
func (e *Env) PinHorizon(ctx context.Context) (stop func(), err error) {
	cfg, err := pgx.ParseConfig(e.URL)
	if err != nil {
		return nil, err
	}
	admin, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer admin.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, PinDatabase).Scan(&exists); err != nil {
		return nil, err
	}
	if !exists {
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{PinDatabase}.Sanitize()); err != nil {
			return nil, fmt.Errorf("benchkit: create %s: %w", PinDatabase, err)
		}
	}
	pinCfg := cfg.Copy()
	pinCfg.Database = PinDatabase
	conn, err := pgx.ConnectConfig(ctx, pinCfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoPin, err)
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		conn.Close(ctx)
		return nil, err
	}
	var xid int64
	if err := tx.QueryRow(ctx, `SELECT txid_current()`).Scan(&xid); err != nil {
		conn.Close(ctx)
		return nil, err
	}
	e.Logf("holding transaction %d open in database %s", xid, PinDatabase)
	return func() {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		conn.Close(context.WithoutCancel(ctx))
		e.Logf("released transaction %d", xid)
	}, nil
}
