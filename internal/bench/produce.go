package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/benchkit"
	"github.com/postbox-dev/postbox/outbox"
)

// variantPostbox names postbox in a comparison with the raw baseline
// (benchkit.VariantRaw).
const variantPostbox = "postbox"

func produceFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	n := fs.Int("n", 20000, "transactions (one message each)")
	producers := fs.Int("producers", 8, "concurrent producers, each on its own connection")
	keys := fs.Int("keys", 0, "distinct message keys (0: messages have no key)")
	var cmp benchkit.CompareFlags
	cmp.Register(fs, variantPostbox)
	return func(ctx context.Context, e *env) (result, error) {
		if *n < 1 || *producers < 1 {
			return result{}, errors.New("--n and --producers must be at least 1")
		}
		db, err := e.Pool(ctx, *producers)
		if err != nil {
			return result{}, err
		}
		run := func(ctx context.Context, variant string, n int) (benchkit.Sample, error) {
			return e.ClosedLoop(ctx, variant, n, *producers, func(ctx context.Context, i int) error {
				return produceOne(ctx, db, variant, i, *keys)
			})
		}
		reset := func(ctx context.Context) error { return e.reset(ctx, db) }
		return cmp.Compare(ctx, e.Env, *n, min(*n/10+1, 1000), reset, run)
	}
}

// produceOne is transaction i: it inserts an order and publishes its
// event, through postbox or by hand.
func produceOne(ctx context.Context, db *pgxpool.Pool, variant string, i, keys int) error {
	msg, o := benchkit.NewMessage(i, "bench.produce", keys)
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, tables.InsertOrder, o.Customer, o.Amount); err != nil {
			return fmt.Errorf("insert order: %w", err)
		}
		if variant == variantPostbox {
			return outbox.Publish(ctx, tx, msg)
		}
		row, err := benchkit.RawRow(msg)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, tables.InsertRaw, row...); err != nil {
			return fmt.Errorf("insert raw outbox row: %w", err)
		}
		return nil
	})
}

func publishBatchFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	n := fs.Int("n", 100000, "messages in all")
	batch := fs.Int("batch", 10000, "messages per transaction")
	keys := fs.Int("keys", 0, "distinct message keys (0: messages have no key)")
	var cmp benchkit.CompareFlags
	cmp.Register(fs, variantPostbox)
	return func(ctx context.Context, e *env) (result, error) {
		if *n < 1 || *batch < 1 {
			return result{}, errors.New("--n and --batch must be at least 1")
		}
		db, err := e.Pool(ctx, 1)
		if err != nil {
			return result{}, err
		}
		run := func(ctx context.Context, variant string, n int) (benchkit.Sample, error) {
			return e.Batches(ctx, variant, n, *batch, func(ctx context.Context, first, size int) error {
				return publishBatch(ctx, db, variant, first, size, *keys)
			})
		}
		reset := func(ctx context.Context) error { return e.reset(ctx, db) }
		res, err := cmp.Compare(ctx, e.Env, *n, min(*n, *batch), reset, run)
		if err != nil {
			return result{}, err
		}
		res.HasLatency = false // per-batch times say little; the rate says it
		return res, nil
	}
}

// publishBatch writes messages first to first+size-1 in one transaction,
// with outbox.PublishBatch or with a plain COPY.
func publishBatch(ctx context.Context, db *pgxpool.Pool, variant string, first, size, keys int) error {
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if variant == variantPostbox {
			msgs := make([]*postbox.Message, size)
			for j := range msgs {
				msgs[j], _ = benchkit.NewMessage(first+j, "bench.batch", keys)
			}
			return outbox.PublishBatch(ctx, tx, msgs)
		}
		rows, err := benchkit.RawRows(first, size, "bench.batch", keys)
		if err != nil {
			return err
		}
		_, err = tx.CopyFrom(ctx, tables.RawOutbox, benchkit.RawColumns, pgx.CopyFromRows(rows))
		return err
	})
}
