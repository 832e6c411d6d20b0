package watermill_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/relay"
)

// bundle is one test database with the pools the tests use on it and a
// relay running for as long as the test.
type bundle struct {
	// pub is for publishers and assertions, sub for subscribers: a
	// subscriber holds a connection per message awaiting its Ack, and
	// publishers must not wait behind those.
	pub, sub *pgxpool.Pool
	relay    *relay.Relay
}

// setup creates a database for t, pools of pubConns and subConns
// connections on it, and runs a relay until t ends.
func setup(t testing.TB, pubConns, subConns int) *bundle {
	t.Helper()
	url := pgtest.URL(t)
	b := &bundle{pub: newPool(t, url, pubConns), sub: newPool(t, url, subConns)}
	r, err := relay.New(newPool(t, url, 2), relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b.relay = r
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done }) // before the pools close: cleanups run last first
	return b
}

func newPool(t testing.TB, url string, maxConns int) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = int32(maxConns)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}
