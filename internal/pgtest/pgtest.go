// Package pgtest gives each test a fresh PostgreSQL database of its own,
// already migrated to the postbox schema, so tests run in parallel.
//
// The server comes from DATABASE_URL, else a server on 127.0.0.1:5432 as
// user postgres, else a container started with testcontainers-go. When none
// works the test fails with a message saying how to provide one; it never
// skips.
//
// The databases are those of postboxtest (internal/testdb makes both):
// each is cloned from a template migrated once per schema version (CREATE
// DATABASE ... TEMPLATE), which costs a fraction of migrating anew, and is
// dropped when the test ends. What pgtest adds is the container fallback
// and the test kit (kit.go).
package pgtest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/postbox-dev/postbox/internal/testdb"
)

const howTo = testdb.HowTo + `;
  - make a Docker engine available, so testcontainers-go can start postgres:15-alpine.`

var (
	serverOnce sync.Once
	serverURL  string
	serverErr  error
)

// server finds the server once per test binary.
func server() (string, error) {
	serverOnce.Do(func() { serverURL, serverErr = findServer() })
	return serverURL, serverErr
}

func findServer() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url, from, err := testdb.Server(ctx)
	switch {
	case err == nil:
		return url, nil
	case os.Getenv("DATABASE_URL") != "":
		return "", fmt.Errorf("DATABASE_URL is set but does not answer: %w\n%s", err, howTo)
	}
	tried := from + ": " + err.Error()
	url, err = startContainer(ctx)
	if err == nil {
		return url, nil
	}
	return "", fmt.Errorf("no PostgreSQL server found (tried: %s; testcontainers: %v)\n%s", tried, err, howTo)
}

func startContainer(ctx context.Context) (url string, err error) {
	defer func() {
		// testcontainers panics on some machines without a Docker engine.
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	c, err := tcpostgres.Run(ctx, "postgres:15-alpine",
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.WithDatabase("postgres"),
		testcontainers.WithWaitStrategy(wait.ForLog("database system is ready to accept connections").
			WithOccurrence(2).WithStartupTimeout(time.Minute)),
	)
	if err != nil {
		return "", err
	}
	// The container lives as long as the test binary; Ryuk removes it after.
	return c.ConnectionString(ctx, "sslmode=disable")
}

// URL creates a fresh migrated database for t and returns its connection
// string. The database is dropped when t ends.
func URL(t testing.TB) string {
	t.Helper()
	server, err := server()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	name, url, err := testdb.Create(ctx, server)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := testdb.Drop(ctx, server, name); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return url
}

// Pool creates a fresh migrated database for t and returns a pool on it
// with up to maxConns connections (0 means 16). Both end with t.
func Pool(t testing.TB, maxConns int) *pgxpool.Pool {
	t.Helper()
	url := URL(t)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if maxConns <= 0 {
		maxConns = 16
	}
	cfg.MaxConns = int32(maxConns)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pgtest: open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}
