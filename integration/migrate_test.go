package integration

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/schema"
)

// Migrations are reversible on a database that holds data: down removes the
// postbox schema with its rows, up rebuilds it empty and working.
func TestMigrationsUpDownUpWithData(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 60*time.Second)
	pool := pgtest.Pool(t, 4)

	if err := dispatcher.DeclareQueue(ctx, pool, "billing", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	subscribe(t, ctx, pool, "audit", "order.#", "")
	for i := range 10 {
		if err := outbox.Send(ctx, pool, &postbox.Message{Topic: "billing", Key: fmt.Sprint(i), Payload: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		if err := outbox.Publish(ctx, pool, &postbox.Message{Topic: "order.created", Key: fmt.Sprint(i), Payload: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
	}
	drain(t, ctx, pool)
	if err := outbox.Publish(ctx, pool, &postbox.Message{Topic: "order.created", Payload: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if got := rowCounts(t, ctx, pool); got != "outbox 1, inbox 20, subscribers 2" {
		t.Fatalf("before: %s", got)
	}
	checkStatus(t, ctx, pool, true)

	if err := schema.Reset(ctx, pool); err != nil {
		t.Fatalf("Reset with data: %v", err)
	}
	checkStatus(t, ctx, pool, false)
	var left int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname = 'postbox'`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Fatalf("schema postbox still exists after Reset")
	}

	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatalf("Migrate after Reset: %v", err)
	}
	checkStatus(t, ctx, pool, true)
	if got := rowCounts(t, ctx, pool); got != "outbox 0, inbox 0, subscribers 0" {
		t.Errorf("after down and up: %s, want an empty schema", got)
	}
	if n := count(t, ctx, pool, `SELECT count(*) FROM postbox.relay_partitions`); n != 16 {
		t.Errorf("%d relay partitions after up, want 16", n)
	}
	// And it works.
	if err := dispatcher.DeclareQueue(ctx, pool, "billing", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := outbox.Send(ctx, pool, &postbox.Message{Topic: "billing", Payload: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if res := drain(t, ctx, pool); res.Delivered != 1 {
		t.Errorf("relay after down and up: %+v, want 1 delivered", res)
	}

	// Down and up once more: Down undoes the latest migration.
	if err := schema.Down(ctx, pool); err != nil {
		t.Fatalf("Down: %v", err)
	}
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatalf("Migrate after Down: %v", err)
	}
	checkStatus(t, ctx, pool, true)
}

// Four processes starting at once may all migrate a fresh database: one
// applies the migrations, the others wait and find nothing to do.
func TestConcurrentMigrateOnFreshDatabase(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 60*time.Second)
	url := freshDatabase(t, ctx)

	const migrators = 4
	errs := make([]error, migrators)
	pools := make([]*pgxpool.Pool, migrators)
	for i := range pools {
		pools[i] = newPool(t, url, 2, fmt.Sprintf("migrator-%d", i))
		// Connect now, so the migrations, not the connections, race.
		if err := pools[i].Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range migrators {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = schema.Migrate(ctx, pools[i])
		}()
	}
	began := time.Now()
	close(start)
	wg.Wait()
	t.Logf("%d concurrent migrations took %s", migrators, time.Since(began).Round(time.Millisecond))
	for i, err := range errs {
		if err != nil {
			t.Errorf("migrator %d: %v", i, err)
		}
	}
	checkStatus(t, ctx, pools[0], true)
	if n := count(t, ctx, pools[0], `SELECT count(*) FROM postbox.relay_partitions`); n != 16 {
		t.Errorf("%d relay partitions, want 16 (migration applied exactly once)", n)
	}
	var applied int
	if err := pools[0].QueryRow(ctx, `SELECT count(*) FROM public.`+schema.VersionTable+` WHERE version_id > 0 AND is_applied`).Scan(&applied); err != nil {
		t.Fatal(err)
	}
	st, err := schema.Status(ctx, pools[0])
	if err != nil {
		t.Fatal(err)
	}
	if applied != len(st) {
		t.Errorf("version table records %d applications, want one per migration (%d)", applied, len(st))
	}
}

// freshDatabase creates an empty database (no postbox schema) on the pgtest
// server, dropped when t ends, and returns its connection string.
func freshDatabase(t *testing.T, ctx context.Context) string {
	t.Helper()
	base := pgtest.URL(t)
	admin := newPool(t, base, 1, "")
	name := fmt.Sprintf("postbox_test_fresh_%d", time.Now().UnixNano())
	ident := pgx.Identifier{name}.Sanitize()
	// template0 never has sessions, so CREATE DATABASE cannot find it busy.
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+ident+" TEMPLATE template0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
			t.Errorf("drop %s: %v", name, err)
		}
	})
	if u, err := url.Parse(base); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Path = "/" + name
		return u.String()
	}
	return base + " dbname=" + name // keyword/value form: the last dbname wins
}

func rowCounts(t *testing.T, ctx context.Context, pool *pgxpool.Pool) string {
	t.Helper()
	return fmt.Sprintf("outbox %d, inbox %d, subscribers %d",
		count(t, ctx, pool, `SELECT count(*) FROM postbox.outbox`),
		count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox`),
		count(t, ctx, pool, `SELECT count(*) FROM postbox.subscribers`))
}

// checkStatus wants every migration applied, or none.
func checkStatus(t *testing.T, ctx context.Context, pool *pgxpool.Pool, applied bool) {
	t.Helper()
	st, err := schema.Status(ctx, pool)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if len(st) == 0 {
		t.Fatal("Status lists no migrations")
	}
	for _, m := range st {
		if m.Applied != applied {
			t.Errorf("migration %d (%s): applied = %v, want %v", m.Version, m.Name, m.Applied, applied)
		}
	}
}
