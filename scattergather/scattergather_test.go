package scattergather_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
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
	"github.com/postbox-dev/postbox/reqreply"
	"github.com/postbox-dev/postbox/scattergather"
)

type quoteRequest struct {
	Order string `json:"order"`
}

type quote struct {
	From  string `json:"from"`
	Cents int    `json:"cents"`
}

type combined struct {
	Order    string  `json:"order"`
	Quotes   []quote `json:"quotes"`
	TimedOut bool    `json:"timedOut"`
}

// quoter answers a quote request with a price of its own, unless it is
// down for that order: then it fails for good, and sends nothing.
func quoter(name string, cents int, downFor string) inbox.Handler {
	return inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		req, err := postbox.Decode[quoteRequest](d.Payload)
		if err != nil {
			return err
		}
		if req.Order == downFor {
			return postbox.Permanent(fmt.Errorf("%s cannot quote %s", name, req.Order))
		}
		payload, err := postbox.JSON(quote{From: name, Cents: cents})
		if err != nil {
			return err
		}
		return reqreply.Reply(ctx, tx, d, &postbox.Message{Type: "quote.v1", Payload: payload})
	})
}

func build(a *aggregate.Aggregate) (*postbox.Message, error) {
	c := combined{Order: a.Key, Quotes: []quote{}, TimedOut: a.TimedOut}
	for _, p := range a.Parts {
		q, err := postbox.Decode[quote](p.Payload)
		if err != nil {
			return nil, err
		}
		if p.Headers[reqreply.HeaderReplier] == "" {
			return nil, errors.New("a reply without its replier")
		}
		c.Quotes = append(c.Quotes, q)
	}
	payload, err := postbox.JSON(c)
	if err != nil {
		return nil, err
	}
	return &postbox.Message{Topic: "quotes", Type: "quotes.combined.v1", Key: a.Key, Payload: payload}, nil
}

type bundle struct {
	pool      *pgxpool.Pool
	ctx       context.Context
	sg        *scattergather.ScatterGather
	consumers []*inbox.Consumer
}

func setup(t *testing.T, timeout time.Duration) *bundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	pool := pgtest.Pool(t, 8)
	sg, err := scattergather.New(scattergather.Config{Name: "quotes", Timeout: timeout, Build: build, Deliver: outbox.Send})
	if err != nil {
		t.Fatal(err)
	}
	b := &bundle{pool: pool, ctx: ctx, sg: sg}
	if err := sg.Declare(ctx, pool, dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"quotes", "inventory", "payment", "shipping"} {
		if err := dispatcher.DeclareQueue(ctx, pool, q, dispatcher.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	b.consume(t, sg.ReplyQueue(), sg)
	return b
}

func (b *bundle) consume(t *testing.T, subscriber string, h inbox.Handler) {
	t.Helper()
	c, err := inbox.NewConsumer(b.pool, inbox.Config{Subscriber: subscriber, Handler: h, NoListen: true})
	if err != nil {
		t.Fatal(err)
	}
	b.consumers = append(b.consumers, c)
}

func (b *bundle) scatter(t *testing.T, order string, to scattergather.Recipients) string {
	t.Helper()
	var key string
	err := pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
		var err error
		key, err = b.sg.Scatter(b.ctx, tx, &postbox.Message{Type: "quote.request.v1",
			Payload: mustJSON(t, quoteRequest{Order: order}),
			Headers: map[string]string{postbox.HeaderCorrelationID: order}}, to)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// results returns the combined quotes delivered to the quotes queue.
func (b *bundle) results(t *testing.T) map[string][]combined {
	t.Helper()
	rows, err := b.pool.Query(b.ctx, `SELECT payload FROM postbox.inbox WHERE subscriber = 'quotes' ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	payloads, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]combined{}
	for _, p := range payloads {
		var c combined
		if err := json.Unmarshal(p, &c); err != nil {
			t.Fatal(err)
		}
		out[c.Order] = append(out[c.Order], c)
	}
	return out
}

func names(c combined) string {
	var s []string
	for _, q := range c.Quotes {
		s = append(s, fmt.Sprintf("%s=%d", q.From, q.Cents))
	}
	return strings.Join(s, ",")
}

// Quotes from three queues: a gather with every reply completes at once;
// one whose shipping quote never comes completes at its timeout with the
// other two. Each result is published once; a scatter rolled back sends
// nothing and opens nothing.
func TestQueues(t *testing.T) {
	t.Parallel()
	b := setup(t, 100*time.Millisecond)
	b.consume(t, "inventory", quoter("inventory", 100, ""))
	b.consume(t, "payment", quoter("payment", 20, ""))
	b.consume(t, "shipping", quoter("shipping", 5, "ord-2"))
	all := scattergather.Recipients{Queues: []string{"shipping", "inventory", "payment"}}
	for _, o := range []string{"ord-1", "ord-2", "ord-3"} {
		if key := b.scatter(t, o, all); key != o {
			t.Fatalf("gather key %q, want the correlation-id %q", key, o)
		}
	}
	err := pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
		if _, err := b.sg.Scatter(b.ctx, tx, &postbox.Message{Payload: []byte(`{"order":"ord-x"}`),
			Headers: map[string]string{postbox.HeaderCorrelationID: "ord-x"}}, all); err != nil {
			return err
		}
		return errors.New("the checkout fails")
	})
	if err == nil {
		t.Fatal("the failing transaction committed")
	}
	res := postboxtest.Drain(b.ctx, t, b.pool, b.consumers...)
	if res.Dead != 1 {
		t.Errorf("Drain = %+v, want the one refused quote dead", res)
	}
	pgtest.WaitFor(t, b.ctx, 10*time.Second, "the incomplete gather timed out", func() bool {
		n, err := b.sg.Sweep(b.ctx, b.pool)
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	})
	postboxtest.Drain(b.ctx, t, b.pool, b.consumers...)

	got := b.results(t)
	want := map[string]string{
		"ord-1": "inventory=100,payment=20,shipping=5",
		"ord-2": "inventory=100,payment=20",
		"ord-3": "inventory=100,payment=20,shipping=5",
	}
	for o, w := range want {
		t.Run(o, func(t *testing.T) {
			if len(got[o]) != 1 || names(got[o][0]) != w || got[o][0].TimedOut != (o == "ord-2") {
				t.Errorf("%s: %+v, want one result of %s", o, got[o], w)
			}
		})
	}
	if len(got) != 3 {
		t.Errorf("results for %d orders, want 3", len(got))
	}
	if _, err := b.sg.State(b.ctx, b.pool, "ord-x"); !errors.Is(err, aggregate.ErrNotFound) {
		t.Errorf("the rolled-back gather: %v, want none", err)
	}
	if st, err := b.sg.State(b.ctx, b.pool, "ord-2"); err != nil || !st.TimedOut || st.Parts != 2 || st.Expected != 3 {
		t.Errorf("ord-2's gather: %+v, %v", st, err)
	}
}

// A topic's subscribers are the recipients: Expect says how many replies
// complete the gather. A reply after completion is late.
func TestTopic(t *testing.T) {
	t.Parallel()
	b := setup(t, time.Hour)
	for _, s := range []string{"acme", "globex", "initech"} {
		if err := dispatcher.Subscribe(b.ctx, b.pool, dispatcher.Subscription{Subscriber: s, Topic: "quote.requested"}); err != nil {
			t.Fatal(err)
		}
	}
	b.consume(t, "acme", quoter("acme", 7, ""))
	b.consume(t, "globex", quoter("globex", 9, ""))
	b.scatter(t, "ord-7", scattergather.Recipients{Topic: "quote.requested", Expect: 2})
	postboxtest.Drain(b.ctx, t, b.pool, b.consumers...)
	if rs := b.results(t)["ord-7"]; len(rs) != 1 || names(rs[0]) != "acme=7,globex=9" || rs[0].TimedOut {
		t.Fatalf("ord-7: %+v", rs)
	}
	// The third quote comes after the gather completed.
	b.consume(t, "initech", quoter("initech", 8, ""))
	postboxtest.Drain(b.ctx, t, b.pool, b.consumers...)
	st, err := b.sg.State(b.ctx, b.pool, "ord-7")
	if err != nil || st.LateParts != 1 || len(b.results(t)["ord-7"]) != 1 {
		t.Errorf("after a late quote: %+v, %v, %d results", st, err, len(b.results(t)["ord-7"]))
	}
}

// Bad recipients are refused before anything is written.
func TestRejects(t *testing.T) {
	t.Parallel()
	if _, err := scattergather.New(scattergather.Config{Name: "q"}); !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("New without Build: %v", err)
	}
	if _, err := scattergather.New(scattergather.Config{Name: "Q", Build: build}); !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("New with a bad name: %v", err)
	}
	b := setup(t, time.Second)
	for _, tt := range []struct {
		name  string
		to    scattergather.Recipients
		field string
	}{
		{"none", scattergather.Recipients{}, "Recipients"},
		{"both", scattergather.Recipients{Topic: "t", Queues: []string{"q"}}, "Recipients"},
		{"bad queue", scattergather.Recipients{Queues: []string{"Q!"}}, "Recipients.Queues[0]"},
		{"a queue twice", scattergather.Recipients{Queues: []string{"a", "a"}}, "Recipients.Queues[1]"},
		{"bad topic", scattergather.Recipients{Topic: "a..b"}, "Recipients.Topic"},
		{"negative expect", scattergather.Recipients{Topic: "t", Expect: -1}, "Recipients.Expect"},
		{"expect for queues", scattergather.Recipients{Queues: []string{"a"}, Expect: 2}, "Recipients.Expect"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := b.sg.Scatter(b.ctx, b.pool, &postbox.Message{}, tt.to)
			var ve *postbox.ValidationError
			if !errors.As(err, &ve) || ve.Field != tt.field {
				t.Errorf("Scatter: %v, want a validation error of %s", err, tt.field)
			}
		})
	}
	if n := pgtest.Count(t, b.ctx, b.pool, `SELECT count(*) FROM postbox.outbox`); n != 0 {
		t.Errorf("%d messages written by refused scatters", n)
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
