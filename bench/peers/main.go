// Command peers runs the postbox benchmark workloads against River
// (github.com/riverqueue/river), so that `postbox bench` figures have a
// peer measured the same way on the same machine. It is a module of its own
// so that the postbox library never depends on River.
//
//	go -C bench/peers run . river-produce --n 20000 --producers 8 --baseline raw
//	go -C bench/peers run . river-publish-batch --n 100000 --batch 10000 --baseline raw
//	go -C bench/peers run . river-drain --n 100000
//	go -C bench/peers run . river-latency --rate 1000 --duration 20s
//
// River's tables are migrated (rivermigrate) into schema "river" of the
// database named by DATABASE_URL or --database-url, and the bench tables go
// into schema "river_bench"; both are truncated before every run, so the
// database's name must contain "bench" or "test" unless --force is given.
// Each workload ends with one line on stdout, in the format of
// `postbox bench`:
//
//	RESULT workload=<name> msgs=<n> seconds=<s> rate=<msgs/s> [p50_ms=<x> p99_ms=<y>] [baseline_rate=<r> ratio=<rate/baseline_rate>]
//
// The common flags, the loads, the raw SQL baseline, the order message and
// that line are postbox bench's own code (internal/benchkit, which Go's
// internal rule lets this module import: its path is under postbox's), so
// both are measured the same way. No password is ever printed.
//
// The client is configured as River's own benchmark configures it
// (2,000 workers, FetchCooldown 2 ms, FetchPollInterval 20 ms; --workers
// changes the first). Workers finish with --complete tx (effect row and
// river.JobCompleteTx in one transaction, the guarantee a postbox handler
// gets) or --complete async (effect row alone; River's completer marks the
// job later, in batches). docs/benchmarks.md has the figures.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/postbox-dev/postbox/internal/benchkit"
)

func main() { benchkit.Main(program.Run) }

var workloads = []benchkit.Workload[*env]{
	{Name: "river-produce", Summary: "P producers, each transaction inserts a business row and one job with InsertTx", Flags: produceFlags},
	{Name: "river-publish-batch", Summary: "InsertManyFastTx (COPY) of B jobs per transaction", Flags: publishBatchFlags},
	{Name: "river-drain", Summary: "N preloaded jobs worked until every worker has committed its effect row", Flags: drainFlags},
	{Name: "river-latency", Summary: "open-loop InsertTx at R/s; insert commit to worker start, p50 and p99", Flags: latencyFlags},
}

var program = &benchkit.Program[*env]{
	Name:      "peers",
	Prefix:    "peers",
	Truncates: "River's job table",
	Workloads: workloads,
	Setup:     setup,
}

// result is what a workload reports: one RESULT line.
type result = benchkit.Result

// ---- environment ----

// env is what a workload runs against.
type env struct{ *benchkit.Env }

const riverSchema = "river"

// variantRiver names River in a comparison with the raw baseline
// (benchkit.VariantRaw).
const variantRiver = "river"

// tables are the bench tables, in schema river_bench; a reset also empties
// River's job table.
var tables = benchkit.NewTables("river_bench", "river.river_job")

// setup creates the bench tables and migrates River's into schema river.
func setup(ctx context.Context, e *benchkit.Env, db *pgxpool.Pool) (*env, error) {
	if _, err := db.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+riverSchema+";"+tables.Setup); err != nil {
		return nil, fmt.Errorf("create bench tables: %w", err)
	}
	m, err := rivermigrate.New(riverpgxv5.New(db), &rivermigrate.Config{Schema: riverSchema})
	if err != nil {
		return nil, err
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return nil, fmt.Errorf("migrate river: %w", err)
	}
	return &env{e}, nil
}

func (e *env) reset(ctx context.Context, db *pgxpool.Pool) error {
	return e.ResetTables(ctx, db, tables.Truncate)
}

// newClient returns a River client on pool, configured as River's own
// benchmark configures it. With no workers it is insert-only.
func (e *env) newClient(pool *pgxpool.Pool, workers *river.Workers, maxWorkers int) (*river.Client[pgx.Tx], error) {
	cfg := &river.Config{
		Schema: riverSchema,
		Logger: slog.New(slog.NewTextHandler(e.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if workers != nil {
		cfg.FetchCooldown = 2 * time.Millisecond
		cfg.FetchPollInterval = 20 * time.Millisecond
		cfg.Queues = map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: maxWorkers}}
		cfg.Workers = workers
	}
	return river.NewClient(riverpgxv5.New(pool), cfg)
}

// ---- the message ----

// orderArgs is the order event postbox bench publishes, as River job
// arguments.
type orderArgs benchkit.Order

func (orderArgs) Kind() string { return "bench_order" }

func newOrder(i int) orderArgs { return orderArgs(benchkit.NewOrder(i)) }

// rawRows are the hand-written outbox rows of orders first to
// first+size-1, the same baseline as `postbox bench --baseline raw`.
func rawRows(first, size int) ([][]any, error) {
	return benchkit.RawRows(first, size, "bench.produce", 0)
}

// ---- river-produce ----

func produceFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	n := fs.Int("n", 20000, "transactions (one job each)")
	producers := fs.Int("producers", 8, "concurrent producers, each on its own connection")
	var cmp benchkit.CompareFlags
	cmp.Register(fs, variantRiver)
	return func(ctx context.Context, e *env) (result, error) {
		if *n < 1 || *producers < 1 {
			return result{}, errors.New("--n and --producers must be at least 1")
		}
		db, err := e.Pool(ctx, *producers)
		if err != nil {
			return result{}, err
		}
		client, err := e.newClient(db, nil, 0)
		if err != nil {
			return result{}, err
		}
		run := func(ctx context.Context, variant string, n int) (benchkit.Sample, error) {
			return e.ClosedLoop(ctx, variant, n, *producers, func(ctx context.Context, i int) error {
				return produceOne(ctx, db, client, variant, i)
			})
		}
		reset := func(ctx context.Context) error { return e.reset(ctx, db) }
		return cmp.Compare(ctx, e.Env, *n, min(*n/10+1, 1000), reset, run)
	}
}

// produceOne is transaction i: it inserts an order and its job, through
// River or by hand.
func produceOne(ctx context.Context, db *pgxpool.Pool, client *river.Client[pgx.Tx], variant string, i int) error {
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		o := newOrder(i)
		if _, err := tx.Exec(ctx, tables.InsertOrder, o.Customer, o.Amount); err != nil {
			return err
		}
		if variant == variantRiver {
			_, err := client.InsertTx(ctx, tx, o, nil)
			return err
		}
		rows, err := rawRows(i, 1)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, tables.InsertRaw, rows[0]...)
		return err
	})
}

// ---- river-publish-batch ----

func publishBatchFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	n := fs.Int("n", 100000, "jobs in all")
	batch := fs.Int("batch", 10000, "jobs per transaction")
	var cmp benchkit.CompareFlags
	cmp.Register(fs, variantRiver)
	return func(ctx context.Context, e *env) (result, error) {
		if *n < 1 || *batch < 1 {
			return result{}, errors.New("--n and --batch must be at least 1")
		}
		db, err := e.Pool(ctx, 1)
		if err != nil {
			return result{}, err
		}
		client, err := e.newClient(db, nil, 0)
		if err != nil {
			return result{}, err
		}
		run := func(ctx context.Context, variant string, n int) (benchkit.Sample, error) {
			return e.Batches(ctx, variant, n, *batch, func(ctx context.Context, first, size int) error {
				return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
					if variant == variantRiver {
						_, err := client.InsertManyFastTx(ctx, tx, insertParams(first, size))
						return err
					}
					rows, err := rawRows(first, size)
					if err != nil {
						return err
					}
					_, err = tx.CopyFrom(ctx, tables.RawOutbox, benchkit.RawColumns, pgx.CopyFromRows(rows))
					return err
				})
			})
		}
		reset := func(ctx context.Context) error { return e.reset(ctx, db) }
		return cmp.Compare(ctx, e.Env, *n, min(*n, *batch), reset, run)
	}
}

// insertParams are the jobs of orders first to first+size-1.
func insertParams(first, size int) []river.InsertManyParams {
	params := make([]river.InsertManyParams, size)
	for j := range params {
		params[j] = river.InsertManyParams{Args: newOrder(first + j)}
	}
	return params
}

// ---- river-drain ----

// effectWorker writes one effect row per job. With tx set it writes it in
// a transaction that also completes the job (river.JobCompleteTx), River's
// way to make a job's effects and its completion atomic, which is what the
// postbox handler gets; otherwise it writes the row on its own and River's
// completer marks the job completed later, in batches.
type effectWorker struct {
	river.WorkerDefaults[orderArgs]
	pool    *pgxpool.Pool
	tx      bool
	started func(seq int)
	handled atomic.Int64
	// maxWorkers is the client's MaxWorkers for the default queue.
	maxWorkers int
}

func (w *effectWorker) Work(ctx context.Context, job *river.Job[orderArgs]) error {
	if w.started != nil {
		w.started(job.Args.Seq)
	}
	id := strconv.FormatInt(job.ID, 10)
	if !w.tx {
		if _, err := w.pool.Exec(ctx, tables.InsertEffect, "river", id); err != nil {
			return err
		}
		w.handled.Add(1)
		return nil
	}
	err := pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, tables.InsertEffect, "river", id); err != nil {
			return err
		}
		_, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
		return err
	})
	if err != nil {
		return err
	}
	w.handled.Add(1)
	return nil
}

func workersFlag(fs *flag.FlagSet) *int {
	return fs.Int("workers", 2000, "MaxWorkers of the queue (River's own benchmark uses 2,000)")
}

func completeFlag(fs *flag.FlagSet) *string {
	return fs.String("complete", "tx", `how a worker finishes: "tx" writes its effect row and completes the job in one transaction (river.JobCompleteTx, the guarantee postbox gives); "async" writes the row on its own and lets River's completer mark the job`)
}

func drainFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	n := fs.Int("n", 100000, "jobs preloaded")
	maxConns := fs.Int("max-conns", 20, "connections in the client's pool")
	complete := completeFlag(fs)
	maxWorkers := workersFlag(fs)
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	pin := fs.Bool("pin", false, "hold a REPEATABLE READ transaction with a transaction ID open, in another database of the cluster, for the whole timed drain (as postbox bench drain --pin)")
	return func(ctx context.Context, e *env) (result, error) {
		if *n < 1 || *maxConns < 2 {
			return result{}, errors.New("--n must be at least 1, --max-conns at least 2")
		}
		if *complete != "tx" && *complete != "async" {
			return result{}, fmt.Errorf("--complete %q: want tx or async", *complete)
		}
		db, err := e.Pool(ctx, *maxConns)
		if err != nil {
			return result{}, err
		}
		if err := e.reset(ctx, db); err != nil {
			return result{}, err
		}
		// Preload, not timed: InsertManyFast (COPY) in batches.
		inserter, err := e.newClient(db, nil, 0)
		if err != nil {
			return result{}, err
		}
		const batch = 10000
		for first := 0; first < *n; first += batch {
			if _, err := inserter.InsertManyFast(ctx, insertParams(first, min(batch, *n-first))); err != nil {
				return result{}, fmt.Errorf("preload: %w", err)
			}
		}
		e.Logf("preloaded %d jobs", *n)
		if _, err := db.Exec(ctx, "VACUUM ANALYZE river.river_job"); err != nil {
			return result{}, err
		}
		w := &effectWorker{pool: db, tx: *complete == "tx", maxWorkers: *maxWorkers}
		if *pin {
			stop, err := e.PinHorizon(ctx)
			if err != nil {
				return result{}, err
			}
			defer stop()
		}
		elapsed, err := work(ctx, e, db, w, int64(*n), *timeout, nil)
		if err != nil {
			return result{}, err
		}
		return result{Msgs: *n, Seconds: elapsed.Seconds()}, nil
	}
}

// work starts a client with w, calls during (if any) once it runs, and
// returns the time from start until w has handled want jobs; it then checks
// the effect rows.
func work(ctx context.Context, e *env, db *pgxpool.Pool, w *effectWorker, want int64, timeout time.Duration,
	during func(ctx context.Context) error) (time.Duration, error) {
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	client, err := e.newClient(db, workers, w.maxWorkers)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := client.Start(ctx); err != nil {
		return 0, err
	}
	stopped := false
	defer func() {
		if !stopped {
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = client.Stop(sctx)
		}
	}()
	stop := e.Every(func() {
		e.Logf("  handled %d/%d (%.0f/s)", w.handled.Load(), want, float64(w.handled.Load())/time.Since(start).Seconds())
	})
	defer stop()
	if during != nil {
		if err := during(ctx); err != nil {
			return 0, err
		}
	}
	if _, err := benchkit.WaitFor(ctx, timeout, func() bool { return w.handled.Load() >= want }); err != nil {
		return 0, fmt.Errorf("%w: handled %d of %d", err, w.handled.Load(), want)
	}
	elapsed := time.Since(start)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stopped = true
	if err := client.Stop(sctx); err != nil {
		return 0, fmt.Errorf("stop client: %w", err)
	}
	if err := tables.CheckEffects(ctx, db, want); err != nil {
		return 0, err
	}
	return elapsed, nil
}

// ---- river-latency ----

func latencyFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	rate := fs.Int("rate", 1000, "jobs per second, each inserted in its own transaction")
	duration := fs.Duration("duration", 20*time.Second, "how long to insert (after a one-second warm-up that is not counted)")
	publishers := fs.Int("publishers", 16, "connections that insert; the schedule never waits for them (open loop)")
	maxConns := fs.Int("max-conns", 20, "connections for the client (workers, fetches, notifications)")
	complete := completeFlag(fs)
	maxWorkers := workersFlag(fs)
	timeout := fs.Duration("timeout", time.Minute, "how long to wait, after inserting, for the last worker to start")
	return func(ctx context.Context, e *env) (result, error) {
		if *rate < 1 || *duration <= 0 || *publishers < 1 || *maxConns < 2 {
			return result{}, errors.New("--rate, --duration, --publishers must be positive, --max-conns at least 2")
		}
		warm := *rate
		total := int(float64(*rate) * duration.Seconds())
		if total < 1 || total+warm > 100_000_000 {
			return result{}, errors.New("--rate × --duration: want 1 to 100 million jobs")
		}
		pubDB, err := e.Pool(ctx, *publishers)
		if err != nil {
			return result{}, err
		}
		db, err := e.Pool(ctx, *maxConns)
		if err != nil {
			return result{}, err
		}
		if err := e.reset(ctx, db); err != nil {
			return result{}, err
		}
		inserter, err := e.newClient(pubDB, nil, 0)
		if err != nil {
			return result{}, err
		}
		commitAt := make([]atomic.Int64, warm+total)
		startAt := make([]atomic.Int64, warm+total)
		w := &effectWorker{pool: db, tx: *complete == "tx", maxWorkers: *maxWorkers, started: func(seq int) {
			if seq >= 0 && seq < len(startAt) {
				startAt[seq].CompareAndSwap(0, time.Now().UnixNano())
			}
		}}
		var elapsed time.Duration
		publish := func(first, n int) (time.Duration, error) {
			return benchkit.OpenLoop(ctx, *rate, *publishers, first, n, func(ctx context.Context, i int) error {
				err := pgx.BeginFunc(ctx, pubDB, func(tx pgx.Tx) error {
					_, err := inserter.InsertTx(ctx, tx, newOrder(i), nil)
					return err
				})
				if err != nil {
					return err
				}
				commitAt[i].Store(time.Now().UnixNano())
				return nil
			})
		}
		_, err = work(ctx, e, db, w, int64(warm+total), *timeout+*duration+time.Minute, func(ctx context.Context) error {
			if _, err := publish(0, warm); err != nil {
				return fmt.Errorf("warm-up: %w", err)
			}
			var err error
			elapsed, err = publish(warm, total)
			return err
		})
		if err != nil {
			return result{}, err
		}
		lats := make([]time.Duration, 0, total)
		for i := warm; i < warm+total; i++ {
			lats = append(lats, max(0, time.Duration(startAt[i].Load()-commitAt[i].Load())))
		}
		e.LogLatency(lats)
		res := result{Msgs: total, Seconds: elapsed.Seconds(), HasLatency: true}
		res.P50, res.P99 = benchkit.Percentiles(lats)
		return res, nil
	}
}
