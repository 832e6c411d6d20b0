package integration

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/relay"
)

// testContext ends with the test, or after limit as a backstop.
func testContext(t *testing.T, limit time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	t.Cleanup(cancel)
	return ctx
}

// newPool opens a pool of maxConns on url, named appName in
// pg_stat_activity when appName is set. It is closed when t ends.
func newPool(t *testing.T, url string, maxConns int32, appName string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = maxConns
	if appName != "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = appName
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// count runs a query returning one number.
func count(t *testing.T, ctx context.Context, db querier, sql string, args ...any) int {
	t.Helper()
	var n int64
	if err := db.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return int(n)
}

// querier is what count needs: a pool, a connection or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// waitFor polls cond every few milliseconds until it holds, and fails the
// test when it still does not after limit.
func waitFor(t *testing.T, ctx context.Context, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting after %s for %s", limit, what)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-tick.C:
		}
	}
}

// drain runs one relay over pool until the outbox has nothing it can claim.
func drain(t *testing.T, ctx context.Context, pool *pgxpool.Pool) relay.Result {
	t.Helper()
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Drain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func subscribe(t *testing.T, ctx context.Context, pool *pgxpool.Pool, subscriber, topic, filter string) {
	t.Helper()
	err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: subscriber, Topic: topic, Filter: filter})
	if err != nil {
		t.Fatalf("subscribe %s to %s: %v", subscriber, topic, err)
	}
}
