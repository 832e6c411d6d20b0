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
// The client is configured as River's own benchmark configures it
// (2,000 workers, FetchCooldown 2 ms, FetchPollInterval 20 ms; --workers
// changes the first). Workers finish with --complete tx (effect row and
// river.JobCompleteTx in one transaction, the guarantee a postbox handler
// gets) or --complete async (effect row alone; River's completer marks the
// job later, in batches). docs/benchmarks.md has the figures.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/postbox-dev/postbox/internal/benchkit"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

type workload struct {
	name, summary string
	flags         func(fs *flag.FlagSet) func(ctx context.Context, e *env) (result, error)
}

var workloads = []workload{
	{"river-produce", "P producers, each transaction inserts a business row and one job with InsertTx", produceFlags},
	{"river-publish-batch", "InsertManyFastTx (COPY) of B jobs per transaction", publishBatchFlags},
	{"river-drain", "N preloaded jobs worked until every worker has committed its effect row", drainFlags},
	{"river-latency", "open-loop InsertTx at R/s; insert commit to worker start, p50 and p99", latencyFlags},
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: peers <workload> [flags]; workloads:")
		for _, w := range workloads {
			fmt.Fprintf(stderr, "  %-20s %s\n", w.name, w.summary)
		}
		return errors.New("peers: name a workload")
	}
	var w *workload
	for i := range workloads {
		if workloads[i].name == args[0] {
			w = &workloads[i]
		}
	}
	if w == nil {
		return fmt.Errorf("peers: unknown workload %q", args[0])
	}
	fs := flag.NewFlagSet(w.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	fs.StringVar(&c.databaseURL, "database-url", os.Getenv("DATABASE_URL"), "PostgreSQL connection string (default $DATABASE_URL)")
	fs.StringVar(&c.cpuprofile, "cpuprofile", "", "write a Go CPU profile of the whole run to this file")
	fs.DurationVar(&c.progress, "progress", 2*time.Second, "how often to report progress on stderr (0: never)")
	fs.BoolVar(&c.force, "force", false, "run even if the database name contains neither \"bench\" nor \"test\"")
	runW := w.flags(fs)
	if err := fs.Parse(args[1:]); err != nil {
		return fmt.Errorf("%s: %w", w.name, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected arguments %q", w.name, fs.Args())
	}
	if c.cpuprofile != "" {
		f, err := os.Create(c.cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	e, err := open(ctx, c, stderr)
	if err != nil {
		return fmt.Errorf("%s: %w", w.name, err)
	}
	defer e.close()
	res, err := runW(ctx, e)
	if err != nil {
		return fmt.Errorf("%s: %w", w.name, err)
	}
	res.workload = w.name
	_, err = fmt.Fprintln(stdout, res.String())
	return err
}

// ---- environment ----

type common struct {
	databaseURL, cpuprofile string
	progress                time.Duration
	force                   bool
}

type env struct {
	url      string
	stderr   io.Writer
	progress time.Duration
	pools    []*pgxpool.Pool
}

const riverSchema = "river"

const sqlSetup = `
CREATE SCHEMA IF NOT EXISTS river;
CREATE SCHEMA IF NOT EXISTS river_bench;
CREATE TABLE IF NOT EXISTS river_bench.orders (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer     text        NOT NULL,
    amount_cents bigint      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS river_bench.raw_outbox (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id uuid        NOT NULL,
    key_hash   integer     NOT NULL,
    is_queue   boolean     NOT NULL DEFAULT false,
    topic      text        NOT NULL,
    type       text        NOT NULL DEFAULT '',
    key        text,
    payload    bytea       NOT NULL,
    headers    jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    deliver_at timestamptz
);
CREATE TABLE IF NOT EXISTS river_bench.effects (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscriber text        NOT NULL,
    message_id text        NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now()
);`

const sqlReset = `TRUNCATE river.river_job, river_bench.orders, river_bench.raw_outbox, river_bench.effects RESTART IDENTITY`

const sqlInsertOrder = `INSERT INTO river_bench.orders (customer, amount_cents) VALUES ($1, $2)`

const sqlInsertRaw = `INSERT INTO river_bench.raw_outbox (message_id, key_hash, topic, type, key, payload, headers)
VALUES ($1, $2, $3, $4, $5, $6, $7)`

var rawCopyColumns = []string{"message_id", "key_hash", "topic", "type", "key", "payload", "headers"}

const sqlInsertEffect = `INSERT INTO river_bench.effects (subscriber, message_id) VALUES ($1, $2)`

const sqlCountEffects = `SELECT count(*), count(DISTINCT (subscriber, message_id)) FROM river_bench.effects`

func open(ctx context.Context, c common, stderr io.Writer) (*env, error) {
	if c.databaseURL == "" {
		return nil, errors.New("no database: set DATABASE_URL or pass --database-url")
	}
	e := &env{url: c.databaseURL, stderr: stderr, progress: c.progress}
	pool, err := e.pool(ctx, 2)
	if err != nil {
		return nil, err
	}
	var name string
	if err := pool.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		e.close()
		return nil, err
	}
	if !c.force && !strings.Contains(name, "bench") && !strings.Contains(name, "test") {
		e.close()
		return nil, fmt.Errorf("database %q: the bench truncates River's job table, so it runs only on a database whose name contains \"bench\" or \"test\", or with --force", name)
	}
	if _, err := pool.Exec(ctx, sqlSetup); err != nil {
		e.close()
		return nil, fmt.Errorf("create bench tables: %w", err)
	}
	m, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: riverSchema})
	if err != nil {
		e.close()
		return nil, err
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		e.close()
		return nil, fmt.Errorf("migrate river: %w", err)
	}
	return e, nil
}

// pool opens a pool of exactly maxConns connections, all established.
func (e *env) pool(ctx context.Context, maxConns int) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(e.url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns, cfg.MinConns = int32(maxConns), int32(maxConns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	conns := make([]*pgxpool.Conn, 0, maxConns)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range maxConns {
		c, err := pool.Acquire(ctx)
		if err != nil {
			pool.Close()
			return nil, err
		}
		conns = append(conns, c)
	}
	e.pools = append(e.pools, pool)
	return pool, nil
}

func (e *env) close() {
	for _, p := range e.pools {
		p.Close()
	}
}

func (e *env) logf(format string, args ...any) {
	if e.progress > 0 {
		fmt.Fprintf(e.stderr, format+"\n", args...)
	}
}

func (e *env) reset(ctx context.Context, db *pgxpool.Pool) error {
	if _, err := db.Exec(ctx, sqlReset); err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	if _, err := db.Exec(ctx, "CHECKPOINT"); err != nil {
		e.logf("checkpoint skipped: %v", err)
	}
	return nil
}

func (e *env) every(report func()) (stop func()) {
	if e.progress <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(e.progress)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				report()
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// newClient returns a River client on pool, configured as River's own
// benchmark configures it. With no workers it is insert-only.
func (e *env) newClient(pool *pgxpool.Pool, workers *river.Workers, maxWorkers int) (*river.Client[pgx.Tx], error) {
	cfg := &river.Config{
		Schema: riverSchema,
		Logger: slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if workers != nil {
		cfg.FetchCooldown = 2 * time.Millisecond
		cfg.FetchPollInterval = 20 * time.Millisecond
		cfg.Queues = map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: maxWorkers}}
		cfg.Workers = workers
	}
	return river.NewClient(riverpgxv5.New(pool), cfg)
}

// ---- results ----

type result struct {
	workload   string
	msgs       int
	seconds    float64
	hasLatency bool
	p50, p99   time.Duration
	baseline   float64
}

func (r result) rate() float64 {
	if r.seconds <= 0 {
		return 0
	}
	return float64(r.msgs) / r.seconds
}

func (r result) String() string {
	s := fmt.Sprintf("RESULT workload=%s msgs=%d seconds=%.3f rate=%.1f", r.workload, r.msgs, r.seconds, r.rate())
	if r.hasLatency {
		s += fmt.Sprintf(" p50_ms=%.2f p99_ms=%.2f", ms(r.p50), ms(r.p99))
	}
	if r.baseline > 0 {
		s += fmt.Sprintf(" baseline_rate=%.1f ratio=%.3f", r.baseline, r.rate()/r.baseline)
	}
	return s
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted)) + 0.999999999)
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// ---- the message ----

// orderArgs is the same order event postbox bench publishes, as River job
// arguments.
type orderArgs struct {
	Seq      int    `json:"seq"`
	Customer string `json:"customer"`
	Amount   int64  `json:"amount_cents"`
	Currency string `json:"currency"`
}

func (orderArgs) Kind() string { return "bench_order" }

func newOrder(i int) orderArgs {
	return orderArgs{Seq: i, Customer: "c-" + strconv.Itoa(i%1000), Amount: 1000 + int64(i%9000), Currency: "EUR"}
}

// rawRow is the hand-written outbox row for order i, the same baseline as
// `postbox bench --baseline raw`.
func rawRow(i int) []any {
	payload, _ := json.Marshal(newOrder(i)) // a struct of strings and ints always marshals
	headers, _ := json.Marshal(map[string]string{"content-type": "application/json"})
	id, _ := uuid.NewV7()
	// key_hash: postbox bench computes murmur2 of the ID here; any integer
	// costs the same to store, and the hash costs nanoseconds.
	hash := int32(binary.BigEndian.Uint32(id[12:]) & 0x7fffffff)
	return []any{id, hash, "bench.produce", "order.created", nil, payload, headers}
}

// ---- interleaved comparison with the raw baseline ----

type sample struct {
	seconds float64
	lat     []time.Duration
}

const (
	variantRiver = "river"
	variantRaw   = "raw"
)

type compareFlags struct {
	baseline string
	rounds   int
}

func (c *compareFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.baseline, "baseline", "", `"raw": also run the hand-written SQL equivalent in the same run and report the ratio`)
	fs.IntVar(&c.rounds, "rounds", 2, "timed runs of each variant, interleaved (raw, river, raw, river, ...); the best run of each is reported")
}

func (c *compareFlags) variants() ([]string, error) {
	switch c.baseline {
	case "":
		return []string{variantRiver}, nil
	case variantRaw:
		return []string{variantRaw, variantRiver}, nil
	}
	return nil, fmt.Errorf("--baseline %q: want raw or nothing", c.baseline)
}

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
	res := result{msgs: n, seconds: best[variantRiver].seconds}
	if lat := best[variantRiver].lat; len(lat) > 0 {
		res.hasLatency = true
		s := slices.Clone(lat)
		slices.Sort(s)
		res.p50, res.p99 = percentile(s, 50), percentile(s, 99)
	}
	if raw, ok := best[variantRaw]; ok && raw.seconds > 0 {
		res.baseline = float64(n) / raw.seconds
	}
	return res
}

// ---- river-produce ----

func produceFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	n := fs.Int("n", 20000, "transactions (one job each)")
	producers := fs.Int("producers", 8, "concurrent producers, each on its own connection")
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
		client, err := e.newClient(db, nil, 0)
		if err != nil {
			return result{}, err
		}
		run := func(ctx context.Context, variant string, n int) (sample, error) {
			return produce(ctx, e, db, client, variant, n, *producers)
		}
		best, err := interleave(ctx, e, db, variants, cmp.rounds, *n, min(*n/10+1, 1000), run)
		if err != nil {
			return result{}, err
		}
		return compareResult(*n, best), nil
	}
}

func produce(ctx context.Context, e *env, db *pgxpool.Pool, client *river.Client[pgx.Tx], variant string, n, producers int) (sample, error) {
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
				err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
					o := newOrder(i)
					if _, err := tx.Exec(ctx, sqlInsertOrder, o.Customer, o.Amount); err != nil {
						return err
					}
					if variant == variantRiver {
						_, err := client.InsertTx(ctx, tx, o, nil)
						return err
					}
					_, err := tx.Exec(ctx, sqlInsertRaw, rawRow(i)...)
					return err
				})
				if err != nil {
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

// ---- river-publish-batch ----

func publishBatchFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	n := fs.Int("n", 100000, "jobs in all")
	batch := fs.Int("batch", 10000, "jobs per transaction")
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
		client, err := e.newClient(db, nil, 0)
		if err != nil {
			return result{}, err
		}
		run := func(ctx context.Context, variant string, n int) (sample, error) {
			start := time.Now()
			for first := 0; first < n; first += *batch {
				size := min(*batch, n-first)
				err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
					if variant == variantRiver {
						params := make([]river.InsertManyParams, size)
						for j := range params {
							params[j] = river.InsertManyParams{Args: newOrder(first + j)}
						}
						_, err := client.InsertManyFastTx(ctx, tx, params)
						return err
					}
					rows := make([][]any, size)
					for j := range rows {
						rows[j] = rawRow(first + j)
					}
					_, err := tx.CopyFrom(ctx, pgx.Identifier{"river_bench", "raw_outbox"}, rawCopyColumns, pgx.CopyFromRows(rows))
					return err
				})
				if err != nil {
					return sample{}, err
				}
			}
			return sample{seconds: time.Since(start).Seconds()}, nil
		}
		best, err := interleave(ctx, e, db, variants, cmp.rounds, *n, min(*n, *batch), run)
		if err != nil {
			return result{}, err
		}
		return compareResult(*n, best), nil
	}
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
		if _, err := w.pool.Exec(ctx, sqlInsertEffect, "river", id); err != nil {
			return err
		}
		w.handled.Add(1)
		return nil
	}
	err := pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, sqlInsertEffect, "river", id); err != nil {
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
		db, err := e.pool(ctx, *maxConns)
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
			params := make([]river.InsertManyParams, min(batch, *n-first))
			for j := range params {
				params[j] = river.InsertManyParams{Args: newOrder(first + j)}
			}
			if _, err := inserter.InsertManyFast(ctx, params); err != nil {
				return result{}, fmt.Errorf("preload: %w", err)
			}
		}
		e.logf("preloaded %d jobs", *n)
		if _, err := db.Exec(ctx, "VACUUM ANALYZE river.river_job"); err != nil {
			return result{}, err
		}
		w := &effectWorker{pool: db, tx: *complete == "tx", maxWorkers: *maxWorkers}
		if *pin {
			stop, err := benchkit.PinHorizon(ctx, e.url, e.logf)
			if err != nil {
				return result{}, err
			}
			defer stop()
		}
		elapsed, err := work(ctx, e, db, w, int64(*n), *timeout, nil)
		if err != nil {
			return result{}, err
		}
		return result{msgs: *n, seconds: elapsed.Seconds()}, nil
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
	stop := e.every(func() {
		e.logf("  handled %d/%d (%.0f/s)", w.handled.Load(), want, float64(w.handled.Load())/time.Since(start).Seconds())
	})
	defer stop()
	if during != nil {
		if err := during(ctx); err != nil {
			return 0, err
		}
	}
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for w.handled.Load() < want {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-deadline.C:
			return 0, fmt.Errorf("not done after %s: handled %d of %d", timeout, w.handled.Load(), want)
		case <-t.C:
		}
	}
	elapsed := time.Since(start)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stopped = true
	if err := client.Stop(sctx); err != nil {
		return 0, fmt.Errorf("stop client: %w", err)
	}
	var rows, distinct int64
	if err := db.QueryRow(ctx, sqlCountEffects).Scan(&rows, &distinct); err != nil {
		return 0, err
	}
	if rows != want || distinct != want {
		return 0, fmt.Errorf("effect rows: %d (%d distinct), want exactly %d", rows, distinct, want)
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
		pubDB, err := e.pool(ctx, *publishers)
		if err != nil {
			return result{}, err
		}
		db, err := e.pool(ctx, *maxConns)
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
		publish := func(from, n int) (time.Duration, error) {
			jobs := make(chan int, n)
			pctx, cancel := context.WithCancel(ctx)
			defer cancel()
			errs := make([]error, *publishers)
			var wg sync.WaitGroup
			for p := range *publishers {
				wg.Go(func() {
					for i := range jobs {
						if pctx.Err() != nil {
							return
						}
						err := pgx.BeginFunc(pctx, pubDB, func(tx pgx.Tx) error {
							_, err := inserter.InsertTx(pctx, tx, newOrder(i), nil)
							return err
						})
						if err != nil {
							errs[p] = err
							cancel()
							return
						}
						commitAt[i].Store(time.Now().UnixNano())
					}
				})
			}
			start := time.Now()
			interval := time.Second / time.Duration(*rate)
			timer := time.NewTimer(0)
			defer timer.Stop()
		schedule:
			for i := range n {
				due := start.Add(time.Duration(i) * interval)
				if wait := time.Until(due); wait > 0 {
					timer.Reset(wait)
					select {
					case <-pctx.Done():
						break schedule
					case <-timer.C:
					}
				}
				jobs <- from + i
			}
			close(jobs)
			wg.Wait()
			return time.Since(start), errors.Join(errs...)
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
		slices.Sort(lats)
		e.logf("latency: p50 %.2fms p90 %.2fms p99 %.2fms p99.9 %.2fms max %.2fms", ms(percentile(lats, 50)),
			ms(percentile(lats, 90)), ms(percentile(lats, 99)), ms(percentile(lats, 99.9)), ms(lats[len(lats)-1]))
		return result{msgs: total, seconds: elapsed.Seconds(), hasLatency: true,
			p50: percentile(lats, 50), p99: percentile(lats, 99)}, nil
	}
}
