package postboxtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/relay"
)

// DrainResult is what a Drain did.
type DrainResult struct {
	// Relayed counts the outbox rows the relay moved.
	Relayed int
	// Handled, Failed, Dead and Duplicates count deliveries over all the
	// consumers, as their Stats do.
	Handled, Failed, Dead, Duplicates int64
}

// maxDrainRounds bounds a Drain's rounds, and each consumer's batches in a
// round: a handler that publishes a message for itself on every delivery
// would otherwise keep it going for ever.
const maxDrainRounds = 1000

// Drain runs a relay (with the default settings) over pool and the given
// consumers, one batch at a time on the test's goroutine, until none of
// them has anything to do now: the outbox is empty and every consumer's
// claim comes back empty. What handlers publish is relayed and handled in
// the same Drain. Retries and delayed messages that are not due yet are
// left for later: Drain does not wait for them. Errors fail tb.
func Drain(ctx context.Context, tb testing.TB, pool *pgxpool.Pool, consumers ...*inbox.Consumer) DrainResult {
	tb.Helper()
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		tb.Fatalf("postboxtest: Drain: %v", err)
	}
	return DrainRelay(ctx, tb, r, consumers...)
}

// DrainRelay is Drain with a relay of the caller's, for one configured
// with an OnBatch hook or a Sink.
func DrainRelay(ctx context.Context, tb testing.TB, r *relay.Relay, consumers ...*inbox.Consumer) DrainResult {
	tb.Helper()
	before := make([]inbox.Stats, len(consumers))
	for i, c := range consumers {
		before[i] = c.Stats()
	}
	var res DrainResult
	for round := 0; ; round++ {
		if round == maxDrainRounds {
			tb.Fatalf("postboxtest: Drain: still busy after %d rounds of relay and consumers; do handlers publish without end?", round)
		}
		r.Chores(ctx) // releases due scheduled messages
		moved, err := r.Drain(ctx)
		if err != nil {
			tb.Fatalf("postboxtest: Drain: relay: %v", err)
		}
		res.Relayed += moved.Claimed
		busy := moved.Claimed > 0 || moved.Quarantined > 0
		for _, c := range consumers {
			for batches := 0; ; batches++ {
				if batches == maxDrainRounds {
					tb.Fatalf("postboxtest: Drain: a consumer still claims deliveries after %d batches", batches)
				}
				n, err := c.RunOnce(ctx)
				if err != nil {
					tb.Fatalf("postboxtest: Drain: consumer: %v", err)
				}
				if n == 0 {
					break
				}
				busy = true
			}
		}
		if !busy {
			break
		}
	}
	for i, c := range consumers {
		s := c.Stats()
		res.Handled += s.Handled - before[i].Handled
		res.Failed += s.Failed - before[i].Failed
		res.Dead += s.Dead - before[i].Dead
		res.Duplicates += s.Duplicates - before[i].Duplicates
	}
	return res
}
