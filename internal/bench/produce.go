package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/murmur2"
	"github.com/postbox-dev/postbox/outbox"
)

const (
	variantPostbox = "postbox"
	variantRaw     = "raw"
)

// sample is one timed run of one variant.
type sample struct {
	seconds float64
	lat     []time.Duration
}

// compareFlags are the flags of workloads that can run a raw-SQL baseline.
type compareFlags struct {
	baseline string
	rounds   int
}

func (c *compareFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.baseline, "baseline", "", `"raw": also run the hand-written SQL equivalent in the same run and report the ratio`)
	fs.IntVar(&c.rounds, "rounds", 2, "timed runs of each variant, interleaved (raw, postbox, raw, postbox, ...); the best run of each is reported")
}

func (c *compareFlags) variants() ([]string, error) {
	switch c.baseline {
	case "":
		return []string{variantPostbox}, nil
	case variantRaw:
		return []string{variantRaw, variantPostbox}, nil
	}
	return nil, fmt.Errorf("--baseline %q: want raw or nothing", c.baseline)
}

// interleave runs each variant once untimed with warmup messages, then
// rounds times in ABAB order, resetting the tables before each run, and
// returns the fastest sample of each variant.
func interleave(ctx context.Context, e *env, db *pgxpool.Pool, variants []string, rounds, n, warmup int,
	run func(ctx context.Context, variant string, n int) (sample, error)) (map[string]sample, error) {
	if rounds < 1 {
		return nil, fmt.Errorf("--rounds %d: want at least 1", rounds)
	}
	best := map[string]sample{}
	for _, v := range variants {
		if err := e.reset(ctx, db); err != nil {
			return nil, err
		}
		if _, err := run(ctx, v, warmup); err != nil {
			return nil, fmt.Errorf("%s warm-up: %w", v, err)
		}
	}
	for r := range rounds {
		for _, v := range variants {
			if err := e.reset(ctx, db); err != nil {
				return nil, err
			}
			s, err := run(ctx, v, n)
			if err != nil {
				return nil, fmt.Errorf("%s run %d: %w", v, r+1, err)
			}
			e.logf("%s run %d/%d: %d msgs in %.3fs = %.0f msgs/s", v, r+1, rounds, n, s.seconds, float64(n)/s.seconds)
			if b, ok := best[v]; !ok || s.seconds < b.seconds {
				best[v] = s
			}
		}
	}
	return best, nil
}

func compareResult(n int, best map[string]sample) result {
	res := result{msgs: n, seconds: best[variantPostbox].seconds}
	if lat := best[variantPostbox].lat; len(lat) > 0 {
		res.hasLatency = true
		res.p50, res.p99 = percentiles(lat)
	}
	if raw, ok := best[variantRaw]; ok && raw.seconds > 0 {
		res.baseline = float64(n) / raw.seconds
	}
	return res
}

// rawRow is the hand-written equivalent of what outbox.Publish writes: the
// same columns, computed the same way.
func rawRow(m *postbox.Message) ([]any, error) {
	if m.ID == uuid.Nil {
		m.ID = postbox.NewID()
	}
	var key *string
	hash := murmur2.Positive(m.ID[:])
	if m.Key != "" {
		key = &m.Key
		hash = murmur2.Positive([]byte(m.Key))
	}
	h, err := json.Marshal(m.Headers)
	if err != nil {
		return nil, err
	}
	return []any{m.ID, hash, m.Topic, m.Type, key, m.Payload, h}, nil
}

func produceFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	n := fs.Int("n", 20000, "transactions (one message each)")
	producers := fs.Int("producers", 8, "concurrent producers, each on its own connection")
	keys := fs.Int("keys", 0, "distinct message keys (0: messages have no key)")
	var cmp compareFlags
	cmp.register(fs)
	return func(ctx context.Context, e *env) (result, error) {
		if *n < 1 || *producers < 1 {
			return result{}, errors.New("--n and --producers must be at least 1")
		}
		variants, err := cmp.variants()
		if err != nil {
			return result{}, err
		}
		db, err := e.pool(ctx, *producers)
		if err != nil {
			return result{}, err
		}
		run := func(ctx context.Context, variant string, n int) (sample, error) {
			return produce(ctx, e, db, variant, n, *producers, *keys)
		}
		best, err := interleave(ctx, e, db, variants, cmp.rounds, *n, min(*n/10+1, 1000), run)
		if err != nil {
			return result{}, err
		}
		return compareResult(*n, best), nil
	}
}

// produce runs n transactions over producers connections; each inserts an
// order and publishes its event, through postbox or by hand.
func produce(ctx context.Context, e *env, db *pgxpool.Pool, variant string, n, producers, keys int) (sample, error) {
	var next, done atomic.Int64
	lats := make([][]time.Duration, producers)
	errs := make([]error, producers)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := e.every(func() { e.logf("  %s: %d/%d transactions", variant, done.Load(), n) })
	start := time.Now()
	var wg sync.WaitGroup
	for p := range producers {
		lats[p] = make([]time.Duration, 0, n/producers+1)
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				if err := produceOne(ctx, db, variant, i, keys); err != nil {
					errs[p] = err
					cancel()
					return
				}
				lats[p] = append(lats[p], time.Since(t0))
				done.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	stop()
	if err := errors.Join(errs...); err != nil {
		return sample{}, err
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	return sample{seconds: elapsed.Seconds(), lat: all}, nil
}

func produceOne(ctx context.Context, db *pgxpool.Pool, variant string, i, keys int) error {
	msg, o := newOrder(i, "bench.produce", keys)
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, sqlInsertOrder, o.Customer, o.Amount); err != nil {
			return fmt.Errorf("insert order: %w", err)
		}
		if variant == variantPostbox {
			return outbox.Publish(ctx, tx, msg)
		}
		row, err := rawRow(msg)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, sqlInsertRaw, row...); err != nil {
			return fmt.Errorf("insert raw outbox row: %w", err)
		}
		return nil
	})
}

func publishBatchFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	n := fs.Int("n", 100000, "messages in all")
	batch := fs.Int("batch", 10000, "messages per transaction")
	keys := fs.Int("keys", 0, "distinct message keys (0: messages have no key)")
	var cmp compareFlags
	cmp.register(fs)
	return func(ctx context.Context, e *env) (result, error) {
		if *n < 1 || *batch < 1 {
			return result{}, errors.New("--n and --batch must be at least 1")
		}
		variants, err := cmp.variants()
		if err != nil {
			return result{}, err
		}
		db, err := e.pool(ctx, 1)
		if err != nil {
			return result{}, err
		}
		run := func(ctx context.Context, variant string, n int) (sample, error) {
			return publishBatch(ctx, e, db, variant, n, *batch, *keys)
		}
		best, err := interleave(ctx, e, db, variants, cmp.rounds, *n, min(*n, *batch), run)
		if err != nil {
			return result{}, err
		}
		res := compareResult(*n, best)
		res.hasLatency = false // per-batch times say little; the rate says it
		return res, nil
	}
}

// publishBatch writes n messages in transactions of batch messages each,
// with outbox.PublishBatch or with a plain COPY.
func publishBatch(ctx context.Context, e *env, db *pgxpool.Pool, variant string, n, batch, keys int) (sample, error) {
	var done atomic.Int64
	stop := e.every(func() { e.logf("  %s: %d/%d messages", variant, done.Load(), n) })
	defer stop()
	start := time.Now()
	for first := 0; first < n; first += batch {
		size := min(batch, n-first)
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			if variant == variantPostbox {
				msgs := make([]*postbox.Message, size)
				for j := range msgs {
					msgs[j], _ = newOrder(first+j, "bench.batch", keys)
				}
				return outbox.PublishBatch(ctx, tx, msgs)
			}
			rows := make([][]any, size)
			for j := range rows {
				msg, _ := newOrder(first+j, "bench.batch", keys)
				row, err := rawRow(msg)
				if err != nil {
					return err
				}
				rows[j] = row
			}
			_, err := tx.CopyFrom(ctx, pgx.Identifier{"postbox_bench", "raw_outbox"}, rawCopyColumns, pgx.CopyFromRows(rows))
			return err
		})
		if err != nil {
			return sample{}, fmt.Errorf("batch at %d: %w", first, err)
		}
		done.Add(int64(size))
	}
	return sample{seconds: time.Since(start).Seconds()}, nil
}
