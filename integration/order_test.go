package integration

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// Contracts 2 and 4 under concurrency: four relays run while four producers
// still publish 20,000 messages on 100 keys to a topic with two subscribers.
// Each subscriber must end up holding every message exactly once, and for
// every key its inbox seq order must be the publish order.
func TestConcurrentRelaysKeepPerKeyOrderAndDeliverExactlyOnce(t *testing.T) {
	t.Parallel()
	const (
		messages  = orderKeys * orderPerKey
		keys      = orderKeys
		perKey    = orderPerKey
		producers = 4
		perTx     = 10 // messages per producer transaction
		relays    = 4
	)
	ctx := testContext(t, 90*time.Second)
	url := pgtest.URL(t)
	pool := newPool(t, url, producers+2, "")
	subscribe(t, ctx, pool, "ledger", "account.event", "")
	subscribe(t, ctx, pool, "search", "account.#", "")

	// Relays first, each on a pool of its own as separate processes would be.
	relayCtx, stopRelays := context.WithCancel(ctx)
	defer stopRelays()
	var running sync.WaitGroup
	rs := make([]*relay.Relay, relays)
	runErrs := make([]error, relays)
	for i := range rs {
		r, err := relay.New(newPool(t, url, 2, fmt.Sprintf("relay-%d", i)), relay.Config{BatchSize: 500, PollInterval: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		rs[i] = r
		running.Add(1)
		go func() {
			defer running.Done()
			runErrs[i] = r.Run(relayCtx)
		}()
	}

	// published[k] lists key k's message IDs in publish order. Each key has
	// one producer, which publishes its messages one after the other.
	var published publishLog
	var producing sync.WaitGroup
	prodErrs := make([]error, producers)
	for p := range producers {
		producing.Add(1)
		go func() {
			defer producing.Done()
			prodErrs[p] = produce(ctx, pool, p, producers, perTx, &published)
		}()
	}
	producing.Wait()
	for p, err := range prodErrs {
		if err != nil {
			t.Fatalf("producer %d: %v", p, err)
		}
	}
	relayedWhileProducing := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox`)

	pgtest.WaitFor(t, ctx, 60*time.Second, "40,000 deliveries", func() bool {
		return pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox`) >= 2*messages
	})
	// Failed batches are counted before stopping: a batch cut short by the
	// stop itself counts as one.
	for i, r := range rs {
		if st := r.Stats(); st.Errors != 0 {
			t.Errorf("relay %d: %d failed batches", i, st.Errors)
		}
	}
	stopRelays()
	running.Wait()
	var claimed []int64
	var total int64
	for i, r := range rs {
		if runErrs[i] != nil {
			t.Errorf("relay %d: Run = %v, want nil after cancel", i, runErrs[i])
		}
		claimed = append(claimed, r.Stats().Claimed)
		total += r.Stats().Claimed
	}
	t.Logf("deliveries made while producers ran: %d; messages claimed per relay: %v", relayedWhileProducing, claimed)
	if total != messages {
		t.Errorf("relays claimed %d messages in all, want %d", total, messages)
	}
	if n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.outbox`); n != 0 {
		t.Errorf("outbox still holds %d rows", n)
	}

	// Read back each subscriber's deliveries per key in seq order.
	got := map[string]map[string][]uuid.UUID{}
	rows, err := pool.Query(ctx, `SELECT subscriber, key, message_id FROM postbox.inbox ORDER BY subscriber, key, seq`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var sub, key string
		var id uuid.UUID
		if err := rows.Scan(&sub, &key, &id); err != nil {
			t.Fatal(err)
		}
		if got[sub] == nil {
			got[sub] = map[string][]uuid.UUID{}
		}
		got[sub][key] = append(got[sub][key], id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("deliveries for subscribers %v, want ledger and search", slices.Sorted(maps.Keys(got)))
	}
	for sub, byKey := range got {
		if len(byKey) != keys {
			t.Errorf("%s: deliveries for %d keys, want %d", sub, len(byKey), keys)
		}
		bad := 0
		for k := range keys {
			key := keyName(k)
			if !slices.Equal(byKey[key], published[k][:]) {
				bad++
				if bad <= 3 {
					t.Errorf("%s: key %s: %d deliveries not in publish order or not exactly once (want %d)", sub, key, len(byKey[key]), perKey)
				}
			}
		}
		if bad > 0 {
			t.Errorf("%s: %d of %d keys wrong", sub, bad, keys)
		}
	}
}

// The order test publishes orderPerKey messages on each of orderKeys keys.
const (
	orderKeys   = 100
	orderPerKey = 200
)

// publishLog holds, per key, the message IDs in publish order.
type publishLog [orderKeys][orderPerKey]uuid.UUID

func keyName(k int) string { return fmt.Sprintf("account-%03d", k) }

// produce publishes, for every key k with k % producers == p, the messages
// 0..perKey-1 in order, perTx messages per transaction, and records their
// IDs in published.
func produce(ctx context.Context, pool *pgxpool.Pool, p, producers, perTx int, published *publishLog) error {
	var mine []int
	for k := p; k < orderKeys; k += producers {
		mine = append(mine, k)
	}
	var batch []*postbox.Message
	flush := func() error {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		for _, m := range batch {
			if err := outbox.Publish(ctx, tx, m); err != nil {
				return err
			}
		}
		batch = batch[:0]
		return tx.Commit(ctx)
	}
	for n := range orderPerKey {
		for _, k := range mine {
			m := &postbox.Message{
				ID:      postbox.NewID(),
				Topic:   "account.event",
				Key:     keyName(k),
				Payload: fmt.Appendf(nil, `{"account":%d,"n":%d}`, k, n),
			}
			published[k][n] = m.ID
			batch = append(batch, m)
			if len(batch) == perTx {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	if len(batch) > 0 {
		return flush()
	}
	return nil
}
