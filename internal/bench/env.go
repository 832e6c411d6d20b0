package bench

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/internal/benchkit"
	"github.com/postbox-dev/postbox/schema"
)

// env is what a workload runs against.
type env struct{ *benchkit.Env }

// tables are the bench's own, in schema postbox_bench (see sql.go for the
// raw drain pipeline's).
var tables = benchkit.NewTables("postbox_bench", "postbox_bench.raw_inbox", "postbox_bench.raw_processed")

// setup migrates the database and creates the bench tables.
func setup(ctx context.Context, e *benchkit.Env, db *pgxpool.Pool) (*env, error) {
	if err := schema.Migrate(ctx, db); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	if _, err := db.Exec(ctx, tables.Setup+";"+sqlSetupRaw); err != nil {
		return nil, fmt.Errorf("create bench tables: %w", err)
	}
	return &env{e}, nil
}

// reset gives every run the same starting point: the postbox schema is
// dropped and migrated again (empty tables with no statistics, as on a fresh
// installation: ANALYZE of an emptied table keeps its old column statistics,
// so plans would otherwise depend on what the previous workload left), the
// bench tables are emptied, and a checkpoint leaves no dirty pages of a
// previous run to flush.
func (e *env) reset(ctx context.Context, db *pgxpool.Pool) error {
	if err := schema.Reset(ctx, db); err != nil {
		return fmt.Errorf("reset: drop postbox schema: %w", err)
	}
	if err := schema.Migrate(ctx, db); err != nil {
		return fmt.Errorf("reset: migrate: %w", err)
	}
	return e.ResetTables(ctx, db, tables.Truncate)
}

// insertEffect is what every bench handler writes through its transaction.
func insertEffect(ctx context.Context, tx pgx.Tx, subscriber, id string) error {
	_, err := tx.Exec(ctx, tables.InsertEffect, subscriber, id)
	return err
}
