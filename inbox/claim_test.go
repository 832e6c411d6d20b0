package inbox_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/outbox"
)

// A hot key whose head another consumer holds, with a deep backlog behind
// it, fills every slot of the fast path's scan; the key walk still finds the
// heads of the other keys, all of them, across several walks.
func TestKeyWalkFindsHeadsBehindAHotKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// 1,000 messages of key k0 first, then one message on each of 30 other
	// keys: the 4 × BatchSize oldest deliveries are all k0's.
	pool := setup(t, 1000, 1, dispatcher.Options{})
	msgs := make([]*postbox.Message, 30)
	for i := range msgs {
		msgs[i] = &postbox.Message{Topic: "work", Key: fmt.Sprintf("other-%02d", i), Payload: []byte(`{"n":-1}`)}
	}
	if err := outbox.SendBatch(ctx, pool, msgs); err != nil {
		t.Fatal(err)
	}
	drain(t, pool)

	// Another consumer holds k0's head.
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if _, err := holder.Exec(ctx, `SELECT 1 FROM postbox.inbox WHERE key = 'k0'
		ORDER BY seq LIMIT 1 FOR UPDATE`); err != nil {
		t.Fatal(err)
	}

	// BatchSize 4: the fast path looks at 16 rows (all k0), a walk visits
	// 16 keys, so the 30 other keys need more than one walk.
	c := newConsumer(t, pool, inbox.Config{Subscriber: "work", Handler: recordEffect, BatchSize: 4})
	for range 20 {
		if _, err := c.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := mustCount(t, pool, `SELECT count(*) FROM effects WHERE key LIKE 'other-%'`); got != 30 {
		t.Fatalf("handled %d of the 30 messages behind the hot key", got)
	}
	if got := mustCount(t, pool, `SELECT count(*) FROM effects WHERE key = 'k0'`); got != 0 {
		t.Fatalf("handled %d messages of the held key", got)
	}
}
