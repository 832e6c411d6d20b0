package aggregate_test

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/aggregate"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/postboxtest"
)

// The queues of every test: parts arrive at "parts", aggregates go to
// "results".
const (
	partsQueue   = "parts"
	resultsQueue = "results"
)

type part struct {
	Order string `json:"order"`
	Line  string `json:"line"`
	Qty   int    `json:"qty"`
	Last  bool   `json:"last,omitempty"`
}

// result is the aggregate message Build makes: the parts' lines in the
// order the aggregate lists them.
type result struct {
	Order    string   `json:"order"`
	Lines    []string `json:"lines"`
	Qty      int      `json:"qty"`
	TimedOut bool     `json:"timedOut"`
}

func build(a *aggregate.Aggregate) (*postbox.Message, error) {
	r := result{Order: a.Key, Lines: []string{}, TimedOut: a.TimedOut}
	for _, p := range a.Parts {
		v, err := postbox.Decode[part](p.Payload)
		if err != nil {
			return nil, err
		}
		r.Lines = append(r.Lines, v.Line)
		r.Qty += v.Qty
	}
	payload, err := postbox.JSON(r)
	if err != nil {
		return nil, err
	}
	return &postbox.Message{Topic: resultsQueue, Type: "order.assembled.v1", Key: a.Key, Payload: payload}, nil
}

// linePartID makes a part's identity its line, so two messages carrying
// the same line are one part.
func linePartID(d *inbox.Delivery) string { return d.Headers["line"] }

type bundle struct {
	pool *pgxpool.Pool
	ctx  context.Context
}

func setup(t *testing.T) *bundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	pool := pgtest.Pool(t, 12)
	fast := dispatcher.Options{Backoff: dispatcher.Backoff{Initial: 5 * time.Millisecond, Max: 20 * time.Millisecond}}
	for _, q := range []string{partsQueue, resultsQueue} {
		if err := dispatcher.DeclareQueue(ctx, pool, q, fast); err != nil {
			t.Fatal(err)
		}
	}
	return &bundle{pool: pool, ctx: ctx}
}

// send sends a part of order's aggregate to the parts queue.
func (b *bundle) send(t *testing.T, p part, key string) *postbox.Message {
	t.Helper()
	msg := &postbox.Message{Topic: partsQueue, Type: "order.line.v1", Key: key, Payload: mustJSON(t, p),
		Headers: map[string]string{postbox.HeaderCorrelationID: p.Order, "line": p.Line}}
	if err := outbox.Send(b.ctx, b.pool, msg); err != nil {
		t.Fatal(err)
	}
	return msg
}

func (b *bundle) consumer(t *testing.T, h inbox.Handler, batch int) *inbox.Consumer {
	t.Helper()
	c, err := inbox.NewConsumer(b.pool, inbox.Config{Subscriber: partsQueue, Handler: h, BatchSize: batch, NoListen: true,
		PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// drainAll relays and handles until every part is handled or dead,
// retries included.
func (b *bundle) drainAll(t *testing.T, consumers ...*inbox.Consumer) {
	t.Helper()
	pgtest.WaitFor(t, b.ctx, 20*time.Second, "every part handled", func() bool {
		postboxtest.Drain(b.ctx, t, b.pool, consumers...)
		return pgtest.Depths(t, b.ctx, b.pool, partsQueue).Pending() == 0 &&
			pgtest.Count(t, b.ctx, b.pool, `SELECT count(*) FROM postbox.outbox`) == 0
	})
}

// results returns the aggregate messages the relay delivered to results.
func (b *bundle) results(t *testing.T) map[string][]result {
	t.Helper()
	rows, err := b.pool.Query(b.ctx, `SELECT payload FROM postbox.inbox WHERE subscriber = $1 ORDER BY seq`, resultsQueue)
	if err != nil {
		t.Fatal(err)
	}
	payloads, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]result{}
	for _, p := range payloads {
		var r result
		if err := json.Unmarshal(p, &r); err != nil {
			t.Fatal(err)
		}
		out[r.Order] = append(out[r.Order], r)
	}
	return out
}

// Parts arriving out of order, duplicated, and the completing one failing
// once after the aggregator ran: each aggregate is published exactly once,
// with its parts in part-ID order, and a part after completion is late.
func TestCountCompletesOnceWhateverTheOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	agg, err := aggregate.New(aggregate.Config{Name: "orders", Count: 4, PartID: linePartID, Build: build,
		Deliver: outbox.Send})
	if err != nil {
		t.Fatal(err)
	}
	// The first attempt of each aggregate's completing part fails after
	// the aggregator has completed it: its transaction rolls back, and the
	// retry completes it again.
	var failed atomic.Int32
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if err := agg.Handle(ctx, tx, d); err != nil {
			return err
		}
		st, err := agg.State(ctx, tx, d.CorrelationID())
		if err != nil {
			return err
		}
		if st.Completed() && d.Attempt == 1 && st.LateParts == 0 {
			failed.Add(1)
			return errors.New("the process fails after completing")
		}
		return nil
	})

	orders := []string{"ord-1", "ord-2", "ord-3"}
	var sends []part
	for _, o := range orders {
		for _, l := range []string{"d", "b", "a", "c"} {
			sends = append(sends, part{Order: o, Line: l, Qty: 1})
		}
		sends = append(sends, part{Order: o, Line: "b", Qty: 100}) // a second message of one part
	}
	rand.Shuffle(len(sends), func(i, j int) { sends[i], sends[j] = sends[j], sends[i] })
	for i, p := range sends {
		msg := b.send(t, p, "") // keyless: parts of one order race for its row
		if i%4 == 0 {
			// The producer sends the same message twice.
			again := *msg
			if err := outbox.Send(b.ctx, b.pool, &again); err != nil {
				t.Fatal(err)
			}
		}
	}
	b.drainAll(t, b.consumer(t, h, 1), b.consumer(t, h, 3))

	got := b.results(t)
	for _, o := range orders {
		rs := got[o]
		if len(rs) != 1 {
			t.Fatalf("%s was published %d times, want once: %+v", o, len(rs), rs)
		}
		if r := rs[0]; strings.Join(r.Lines, "") != "abcd" || r.TimedOut {
			t.Errorf("%s = %+v, want lines abcd in part order", o, r)
		}
		st, err := agg.State(b.ctx, b.pool, o)
		if err != nil {
			t.Fatal(err)
		}
		// The second "b" counts as a duplicate part while open, or as a
		// late part once complete: never as a fifth part.
		if !st.Completed() || st.Parts != 4 || st.LateParts > 1 || st.ResultID != aggregate.ResultID("orders", o, st.CreatedAt) {
			t.Errorf("%s state %+v", o, st)
		}
	}
	// (A handler may run more than once for one attempt: a failure re-runs
	// its batch's others.)
	if failed.Load() < int32(len(orders)) {
		t.Errorf("%d completing handler runs failed, want at least %d", failed.Load(), len(orders))
	}
	if n := pgtest.Count(t, b.ctx, b.pool, `SELECT count(*) FROM postbox.aggregate_parts`); n != 0 {
		t.Errorf("%d parts kept after completion, want none", n)
	}

	// A part of a completed aggregate is late: counted, not published.
	b.send(t, part{Order: "ord-1", Line: "e", Qty: 1}, "ord-1")
	b.drainAll(t, b.consumer(t, agg, 10))
	if st, _ := agg.State(b.ctx, b.pool, "ord-1"); st.LateParts < 1 || len(b.results(t)["ord-1"]) != 1 {
		t.Errorf("after a late part: %+v, %d results", st, len(b.results(t)["ord-1"]))
	}
}

// A predicate completes an aggregate when it says so; a Late handler gets
// what comes after.
func TestPredicateAndLateHandler(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var late atomic.Int32
	agg, err := aggregate.New(aggregate.Config{Name: "until-last", PartID: linePartID, Build: build, Deliver: outbox.Send,
		Predicate: func(a *aggregate.Aggregate) bool {
			for _, p := range a.Parts {
				if v, _ := postbox.Decode[part](p.Payload); v.Last {
					return true
				}
			}
			return false
		},
		Late: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			late.Add(1)
			return nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []part{{Line: "x", Qty: 1}, {Line: "y", Qty: 2}, {Line: "z", Qty: 3, Last: true}, {Line: "w", Qty: 4}} {
		p.Order = "ord-9"
		b.send(t, p, p.Order) // keyed: handled one at a time, in order
	}
	b.drainAll(t, b.consumer(t, agg, 10))
	rs := b.results(t)["ord-9"]
	if len(rs) != 1 || strings.Join(rs[0].Lines, "") != "xyz" || rs[0].Qty != 6 {
		t.Fatalf("results %+v, want one of x, y, z", rs)
	}
	if late.Load() != 1 {
		t.Errorf("Late handled %d parts, want the one after the last", late.Load())
	}
}

// Timeouts fire when Sweep runs: an aggregate that began with its first
// part, and one opened before any part came, complete with what arrived;
// Open refuses a key in use; old aggregates are forgotten.
func TestTimeouts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	agg, err := aggregate.New(aggregate.Config{Name: "quotes", Count: 3, Timeout: 50 * time.Millisecond,
		PartID: linePartID, Build: build, Deliver: outbox.Send, Retention: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	b.send(t, part{Order: "slow", Line: "a", Qty: 1}, "slow")
	b.send(t, part{Order: "slow", Line: "b", Qty: 1}, "slow")
	b.drainAll(t, b.consumer(t, agg, 10))
	if err := agg.Open(b.ctx, b.pool, "empty", aggregate.OpenOptions{Expected: 2, Deadline: time.Now().Add(30 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	if err := agg.Open(b.ctx, b.pool, "slow", aggregate.OpenOptions{}); !errors.Is(err, aggregate.ErrExists) {
		t.Fatalf("Open of a key in use: %v, want ErrExists", err)
	}
	if st, err := agg.State(b.ctx, b.pool, "empty"); err != nil || st.Expected != 2 || st.Completed() {
		t.Fatalf("opened state %+v, %v", st, err)
	}
	completed := 0
	pgtest.WaitFor(t, b.ctx, 10*time.Second, "both aggregates timed out", func() bool {
		n, err := agg.Sweep(b.ctx, b.pool)
		if err != nil {
			t.Fatal(err)
		}
		completed += n
		return completed == 2
	})
	postboxtest.Drain(b.ctx, t, b.pool)
	got := b.results(t)
	if rs := got["slow"]; len(rs) != 1 || strings.Join(rs[0].Lines, "") != "ab" || !rs[0].TimedOut {
		t.Errorf("slow: %+v, want one timed-out result of a and b", rs)
	}
	if rs := got["empty"]; len(rs) != 1 || len(rs[0].Lines) != 0 || !rs[0].TimedOut {
		t.Errorf("empty: %+v, want one timed-out result without parts", rs)
	}
	// The tombstones outlive their retention by now: the next sweep
	// forgets them.
	pgtest.WaitFor(t, b.ctx, 10*time.Second, "the aggregates forgotten", func() bool {
		if _, err := agg.Sweep(b.ctx, b.pool); err != nil {
			t.Fatal(err)
		}
		_, err := agg.State(b.ctx, b.pool, "slow")
		return errors.Is(err, aggregate.ErrNotFound)
	})

	// Run sweeps on its own.
	if err := agg.Open(b.ctx, b.pool, "run", aggregate.OpenOptions{Deadline: time.Now()}); err != nil {
		t.Fatal(err)
	}
	runner, _ := aggregate.New(aggregate.Config{Name: "quotes", Timeout: time.Second, Build: build, Deliver: outbox.Send,
		SweepInterval: 5 * time.Millisecond})
	ctx, stop := context.WithCancel(b.ctx)
	done := make(chan error, 1)
	go func() { done <- runner.Run(ctx, b.pool) }()
	pgtest.WaitFor(t, b.ctx, 10*time.Second, "Run completes the due aggregate", func() bool {
		st, err := agg.State(b.ctx, b.pool, "run")
		return err == nil && st.Completed() && st.TimedOut
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A Build that fails leaves a due aggregate open for the next sweep, and
// the others complete.
func TestSweepFailureLeavesTheAggregateOpen(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var broken atomic.Bool
	broken.Store(true)
	agg, err := aggregate.New(aggregate.Config{Name: "fragile", Timeout: time.Hour, Deliver: outbox.Send,
		Build: func(a *aggregate.Aggregate) (*postbox.Message, error) {
			if a.Key == "bad" && broken.Load() {
				return nil, errors.New("no template")
			}
			return build(a)
		}})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"bad", "good"} {
		if err := agg.Open(b.ctx, b.pool, k, aggregate.OpenOptions{Deadline: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := agg.Sweep(b.ctx, b.pool)
	if n != 1 || err == nil || !strings.Contains(err.Error(), "no template") {
		t.Fatalf("Sweep = %d, %v; want 1 and the failure", n, err)
	}
	if st, _ := agg.State(b.ctx, b.pool, "bad"); st.Completed() {
		t.Fatal("the failed aggregate completed")
	}
	broken.Store(false)
	if n, err := agg.Sweep(b.ctx, b.pool); n != 1 || err != nil {
		t.Fatalf("second Sweep = %d, %v", n, err)
	}
	// Build may also complete without a message.
	quiet, _ := aggregate.New(aggregate.Config{Name: "quiet", Count: 1,
		Build: func(*aggregate.Aggregate) (*postbox.Message, error) { return nil, nil }})
	b.send(t, part{Order: "q", Line: "a"}, "q")
	b.drainAll(t, b.consumer(t, quiet, 1))
	if st, err := quiet.State(b.ctx, b.pool, "q"); err != nil || !st.Completed() || st.ResultID != [16]byte{} {
		t.Errorf("quiet: %+v, %v", st, err)
	}
}

// Bad configuration and bad parts are refused, naming what is wrong.
func TestRejects(t *testing.T) {
	t.Parallel()
	ok := func(*aggregate.Aggregate) (*postbox.Message, error) { return nil, nil }
	for _, tt := range []struct {
		name  string
		cfg   aggregate.Config
		field string
	}{
		{"no name", aggregate.Config{Count: 1, Build: ok}, "Config.Name"},
		{"bad name", aggregate.Config{Name: "A", Count: 1, Build: ok}, "Config.Name"},
		{"no build", aggregate.Config{Name: "a", Count: 1}, "Config.Build"},
		{"no rule", aggregate.Config{Name: "a", Build: ok}, "Config.Count"},
		{"negative count", aggregate.Config{Name: "a", Count: -1, Build: ok}, "Config.Count"},
		{"negative timeout", aggregate.Config{Name: "a", Timeout: -1, Count: 1, Build: ok}, "Config.Timeout"},
		{"negative retention", aggregate.Config{Name: "a", Count: 1, Build: ok, Retention: -1}, "Config.Retention"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := aggregate.New(tt.cfg)
			var ve *postbox.ValidationError
			if !errors.As(err, &ve) || ve.Field != tt.field {
				t.Errorf("New: %v, want a validation error of %s", err, tt.field)
			}
		})
	}
	b := setup(t)
	agg, _ := aggregate.New(aggregate.Config{Name: "a", Count: 2, Build: ok})
	if err := agg.Open(b.ctx, b.pool, "", aggregate.OpenOptions{}); !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("Open of an empty key: %v", err)
	}
	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(b.ctx)
	d := &inbox.Delivery{Message: postbox.Message{ID: postbox.NewID(), Topic: partsQueue,
		Headers: map[string]string{postbox.HeaderCorrelationID: strings.Repeat("k", aggregate.MaxKeyBytes+1)}}}
	if err := agg.Handle(b.ctx, tx, d); !postbox.IsPermanent(err) || !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("a part with a key too long: %v, want a permanent validation error", err)
	}
	if _, err := agg.State(b.ctx, b.pool, "nope"); !errors.Is(err, aggregate.ErrNotFound) {
		t.Errorf("State of an unknown key: %v", err)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	p, err := postbox.JSON(v)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
