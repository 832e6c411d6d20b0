package integration

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
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

// drain runs one relay over pool until the outbox has nothing it can claim.
func drain(t *testing.T, ctx context.Context, pool *pgxpool.Pool) relay.Result {
	t.Helper()
	return pgtest.Drain(t, ctx, pool)
}

func subscribe(t *testing.T, ctx context.Context, pool *pgxpool.Pool, subscriber, topic, filter string) {
	t.Helper()
	err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: subscriber, Topic: topic, Filter: filter})
	if err != nil {
		t.Fatalf("subscribe %s to %s: %v", subscriber, topic, err)
	}
}
