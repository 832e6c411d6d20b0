package relay_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

func TestSinkTakesMessagesInOrderAndFailureKeepsThem(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	const n = 250
	for i := range n {
		msg := &postbox.Message{Topic: "order.created", Key: fmt.Sprintf("k%d", i%7), Payload: []byte(fmt.Sprint(i)),
			Headers: map[string]string{postbox.HeaderCorrelationID: "c"}}
		if err := outbox.Publish(ctx, pool, msg); err != nil {
			t.Fatal(err)
		}
	}

	failing := dispatcher.SinkFunc(func(context.Context, []dispatcher.Envelope) error { return errors.New("broker down") })
	r, err := relay.New(pool, relay.Config{Sink: failing, BatchSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.RunOnce(ctx); err == nil {
		t.Fatal("RunOnce with a failing sink returned nil")
	}
	var waiting int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM postbox.outbox`).Scan(&waiting); err != nil || waiting != n {
		t.Fatalf("outbox after failed delivery = %d (%v), want %d", waiting, err, n)
	}

	var got []dispatcher.Envelope
	collect := dispatcher.SinkFunc(func(_ context.Context, b []dispatcher.Envelope) error {
		got = append(got, b...)
		return nil
	})
	r, err = relay.New(pool, relay.Config{Sink: collect, BatchSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := r.Drain(ctx); err != nil || res.Claimed != n {
		t.Fatalf("drain = %+v, %v; want %d claimed", res, err, n)
	}
	if len(got) != n {
		t.Fatalf("sink got %d, want %d", len(got), n)
	}
	last := map[string]int{}
	for _, e := range got {
		var i int
		fmt.Sscan(string(e.Payload), &i)
		if prev, ok := last[e.Key]; ok && i < prev {
			t.Fatalf("key %s: %d after %d", e.Key, i, prev)
		}
		last[e.Key] = i
		if want := dispatcher.Partition(e.Key, 12); int(e.KeyHash)%12 != want {
			t.Fatalf("KeyHash %% 12 = %d, Partition = %d", int(e.KeyHash)%12, want)
		}
		if e.Headers[postbox.HeaderCorrelationID] != "c" {
			t.Fatalf("headers = %v", e.Headers)
		}
	}
}
