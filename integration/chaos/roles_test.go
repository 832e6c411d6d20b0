package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// A role is the test binary started again with roleEnv set: it runs one
// relay, consumer or producer process against the database until it is
// killed, its parent goes away (stdin closes) or, for a producer, its work
// is done. Roles use only postbox's public API.
const (
	roleEnv   = "POSTBOX_CHAOS_ROLE"
	paramsEnv = "POSTBOX_CHAOS_PARAMS"
)

// roleParams configure a role process; they travel as JSON in paramsEnv.
type roleParams struct {
	Name string // the process's name; its sessions are appRole + Name
	URL  string
	// producer
	Keys           []int
	PerKey         int
	Workers        int
	Rate           float64 // messages a second, all workers together
	AmbiguousEvery int
	// relay
	BatchSize int
	Listen    bool
	// consumer
	Concurrency int
}

// producerStats is the one line a producer prints on stdout when done.
type producerStats struct {
	Messages  int // messages committed
	Txs       int // transactions committed
	Failures  int // tries that failed and were retried
	Ambiguous int // of those, failed at COMMIT: the outcome was unknown
}

func runRole(role string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var p roleParams
	if err := json.Unmarshal([]byte(os.Getenv(paramsEnv)), &p); err != nil {
		log.Error("bad role parameters", "err", err)
		return 2
	}
	log = log.With("process", p.Name)
	// The parent holds our stdin: when it goes, so do we. SIGTERM stops us
	// cleanly.
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	cfg, err := pgxpool.ParseConfig(p.URL)
	if err != nil {
		log.Error("bad url", "err", err)
		return 2
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = appRole + p.Name
	var run func(context.Context, *pgxpool.Pool, roleParams, *slog.Logger) error
	switch role {
	case "relay":
		cfg.MaxConns = 2
		run = runRelay
	case "consumer":
		cfg.MaxConns = int32(2*p.Concurrency + 1) // two consumers, and one to spare
		run = runConsumer
	case "producer":
		cfg.MaxConns = int32(p.Workers)
		run = runProducer
	default:
		log.Error("unknown role", "role", role)
		return 2
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		log.Error("open pool", "err", err)
		return 2
	}
	defer pool.Close()
	if err := run(ctx, pool, p, log); err != nil {
		log.Error("role failed", "role", role, "err", err)
		return 1
	}
	return 0
}

// untilDone calls run until ctx ends: Run methods return early only when
// they cannot start (the database is down, say).
func untilDone(ctx context.Context, log *slog.Logger, what string, run func(context.Context) error) {
	for ctx.Err() == nil {
		if err := run(ctx); err != nil && ctx.Err() == nil {
			log.Warn(what+" stopped; starting again", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func runRelay(ctx context.Context, pool *pgxpool.Pool, p roleParams, log *slog.Logger) error {
	r, err := relay.New(pool, relay.Config{BatchSize: p.BatchSize, Listen: p.Listen,
		MaxPollInterval: 500 * time.Millisecond, Logger: log})
	if err != nil {
		return err
	}
	untilDone(ctx, log, "relay", r.Run)
	return nil
}

func runConsumer(ctx context.Context, pool *pgxpool.Pool, p roleParams, log *slog.Logger) error {
	a, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: subA, Handler: effectHandler(p.Name),
		BatchSize: 50, Concurrency: p.Concurrency, MaxPollInterval: 300 * time.Millisecond, Logger: log})
	if err != nil {
		return err
	}
	b, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: subB, BatchHandler: effectBatchHandler(p.Name),
		BatchSize: 50, Concurrency: p.Concurrency, NoListen: true,
		PollInterval: 20 * time.Millisecond, MaxPollInterval: 200 * time.Millisecond, Logger: log})
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Go(func() { untilDone(ctx, log, "consumer "+subA, a.Run) })
	wg.Go(func() { untilDone(ctx, log, "consumer "+subB, b.Run) })
	wg.Wait()
	return nil
}

// chaosPayload is what every message carries.
type chaosPayload struct {
	Key string `json:"key"`
	Seq int    `json:"seq"`
}

// injected reports whether the handler fails this attempt on purpose: the
// first attempt of about one delivery in failOneIn, chosen by message ID so
// that every subscriber and every process agree.
func injected(d *inbox.Delivery) bool {
	h := fnv.New32a()
	h.Write(d.ID[:])
	return d.Attempt == 1 && h.Sum32()%failOneIn == 0
}

var errInjected = errors.New("chaos: injected failure of a first attempt")

func effectArgs(d *inbox.Delivery, consumer string) ([]any, error) {
	var p chaosPayload
	if err := json.Unmarshal(d.Payload, &p); err != nil {
		return nil, postbox.Permanent(fmt.Errorf("payload %q: %w", d.Payload, err))
	}
	if p.Key != d.Key {
		return nil, postbox.Permanent(fmt.Errorf("payload key %q, message key %q", p.Key, d.Key))
	}
	return []any{d.Subscriber, d.Key, p.Seq, d.ID, d.Attempt, consumer}, nil
}

// effectHandler writes the delivery's effect, and then fails if the attempt
// is one to fail: the effect must then be rolled back.
func effectHandler(consumer string) inbox.Handler {
	return inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		args, err := effectArgs(d, consumer)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, sqlEffect, args...); err != nil {
			return err
		}
		if injected(d) {
			return errInjected
		}
		return nil
	})
}

// effectBatchHandler writes the batch's effects in one round trip and names
// the deliveries to fail in a BatchError.
func effectBatchHandler(consumer string) inbox.BatchHandler {
	return inbox.BatchHandlerFunc(func(ctx context.Context, tx pgx.Tx, ds []*inbox.Delivery) error {
		var batch pgx.Batch
		var fails inbox.BatchError
		for _, d := range ds {
			args, err := effectArgs(d, consumer)
			if err != nil {
				fails.Fail(d.ID, err)
				continue
			}
			batch.Queue(sqlEffect, args...)
			if injected(d) {
				fails.Fail(d.ID, errInjected)
			}
		}
		if err := tx.SendBatch(ctx, &batch).Close(); err != nil {
			return err
		}
		return fails.Err()
	})
}

// runProducer publishes p.PerKey messages on each of p.Keys, seq 1 up, with
// p.Workers goroutines, each owning some of the keys, so that a key's
// messages are published one transaction after another. A transaction
// carries one to four messages, of one key or several, and records them in
// chaos.sent. A failed transaction is retried with the same messages (same
// IDs) until it commits; one commit in p.AmbiguousEvery is cut off while
// under way, so its outcome is unknown.
func runProducer(ctx context.Context, pool *pgxpool.Pool, p roleParams, log *slog.Logger) error {
	var st struct{ messages, txs, failures, ambiguous atomic.Int64 }
	var wg sync.WaitGroup
	errs := make([]error, p.Workers)
	for w := range p.Workers {
		var keys []int
		for i, k := range p.Keys {
			if i%p.Workers == w {
				keys = append(keys, k)
			}
		}
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			next := make(map[int]int, len(keys)) // key → next seq
			for _, k := range keys {
				next[k] = 1
			}
			interval := time.Duration(float64(time.Second) * float64(p.Workers) / p.Rate)
			due := time.Now()
			for len(next) > 0 {
				msgs := pickMessages(rng, keys, next, p.PerKey)
				for attempt := 1; ; attempt++ {
					ambiguous, err := publishOnce(ctx, pool, msgs, rng.IntN(p.AmbiguousEvery) == 0, rng)
					if err == nil {
						break
					}
					if ctx.Err() != nil {
						errs[w] = ctx.Err()
						return
					}
					st.failures.Add(1)
					if ambiguous {
						st.ambiguous.Add(1)
					}
					if attempt%20 == 0 {
						log.Warn("publish still failing", "attempt", attempt, "err", err)
					}
					time.Sleep(time.Duration(min(attempt, 6)) * 10 * time.Millisecond)
				}
				st.txs.Add(1)
				st.messages.Add(int64(len(msgs)))
				due = due.Add(time.Duration(len(msgs)) * interval)
				time.Sleep(time.Until(due)) // pacing, not synchronization
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(producerStats{Messages: int(st.messages.Load()),
		Txs: int(st.txs.Load()), Failures: int(st.failures.Load()), Ambiguous: int(st.ambiguous.Load())})
}

// pickMessages takes the next one to four messages: consecutive ones of one
// key, or the next one of each of several keys. It advances next and drops
// keys that are done.
func pickMessages(rng *rand.Rand, keys []int, next map[int]int, perKey int) []*postbox.Message {
	var open []int
	for _, k := range keys {
		if _, ok := next[k]; ok {
			open = append(open, k)
		}
	}
	n := 1 + rng.IntN(4)
	take := func(k int) *postbox.Message {
		seq := next[k]
		if seq == perKey {
			delete(next, k)
		} else {
			next[k] = seq + 1
		}
		payload, _ := json.Marshal(chaosPayload{Key: keyName(k), Seq: seq})
		return &postbox.Message{ID: postbox.NewID(), Topic: topic, Type: "chaos.order", Key: keyName(k),
			Payload: payload, Headers: map[string]string{postbox.HeaderContentType: "application/json"}}
	}
	var msgs []*postbox.Message
	if rng.IntN(2) == 0 {
		k := open[rng.IntN(len(open))]
		for range n {
			if _, ok := next[k]; !ok {
				break
			}
			msgs = append(msgs, take(k))
		}
		return msgs
	}
	rng.Shuffle(len(open), func(i, j int) { open[i], open[j] = open[j], open[i] })
	for _, k := range open[:min(n, len(open))] {
		msgs = append(msgs, take(k))
	}
	return msgs
}

// publishOnce tries one transaction. cut makes its COMMIT ambiguous: the
// connection is dropped a moment after COMMIT is sent, before or after the
// server committed. ambiguous reports a failure at COMMIT.
func publishOnce(ctx context.Context, pool *pgxpool.Pool, msgs []*postbox.Message, cut bool, rng *rand.Rand) (ambiguous bool, err error) {
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return false, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	ids := make([]uuid.UUID, len(msgs))
	keys := make([]string, len(msgs))
	seqs := make([]int32, len(msgs))
	for i, m := range msgs {
		var pl chaosPayload
		_ = json.Unmarshal(m.Payload, &pl)
		ids[i], keys[i], seqs[i] = m.ID, m.Key, int32(pl.Seq)
	}
	if _, err := tx.Exec(ctx, sqlRecordSent, ids, keys, seqs); err != nil {
		return false, err
	}
	if len(msgs) == 1 && rng.IntN(2) == 0 {
		err = outbox.Publish(ctx, tx, msgs[0])
	} else {
		err = outbox.PublishBatch(ctx, tx, msgs)
	}
	if err != nil {
		return false, err
	}
	cctx := ctx
	if cut {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, time.Duration(rng.IntN(1500))*time.Microsecond)
		defer cancel()
	}
	if err := tx.Commit(cctx); err != nil {
		return true, err
	}
	return false, nil
}
