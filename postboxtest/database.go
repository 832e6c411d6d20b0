package postboxtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/internal/testdb"
)

// LocalURL is the server used when DATABASE_URL is not set.
const LocalURL = testdb.LocalURL

// ErrNoServer is returned (wrapped, with what was tried and how to provide
// a server) when no PostgreSQL server answers.
var ErrNoServer = errors.New("postboxtest: no PostgreSQL server")

const howTo = testdb.HowTo + "."

// Database is a throwaway database on the test server, migrated to the
// postbox schema. Drop it when done; Pool and URL do that when the test
// ends.
type Database struct {
	// URL connects to the database.
	URL string
	// Name is the database's name.
	Name   string
	server string
}

// NewDatabase creates a fresh database migrated to the postbox schema on
// the server at DATABASE_URL, else LocalURL. The database is a clone of a
// template migrated once per schema version, which takes a fraction of a
// migration. Use it where there is no testing.TB (a TestMain, an example);
// in a test, Pool or URL.
func NewDatabase(ctx context.Context) (*Database, error) {
	server, err := findServer(ctx)
	if err != nil {
		return nil, err
	}
	name, dsn, err := testdb.Create(ctx, server)
	if err != nil {
		return nil, fmt.Errorf("postboxtest: %w", err)
	}
	return &Database{URL: dsn, Name: name, server: server}, nil
}

// Drop drops the database, closing whatever is still connected to it.
func (d *Database) Drop(ctx context.Context) error {
	if err := testdb.Drop(ctx, d.server, d.Name); err != nil {
		return fmt.Errorf("postboxtest: %w", err)
	}
	return nil
}

// URL creates a fresh migrated database for tb (see NewDatabase) and
// returns its connection string. The database is dropped when tb ends.
func URL(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := NewDatabase(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := d.Drop(ctx); err != nil {
			tb.Error(err)
		}
	})
	return d.URL
}

// Pool creates a fresh migrated database for tb and returns a pool of up
// to 16 connections on it (enough for a relay and a few consumers). Both
// end with tb.
func Pool(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(URL(tb))
	if err != nil {
		tb.Fatalf("postboxtest: %v", err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatalf("postboxtest: open pool: %v", err)
	}
	tb.Cleanup(pool.Close) // before the drop: cleanups run last first
	return pool
}

// MustPool is Pool for code without a testing.TB, such as runnable
// examples: it creates a fresh migrated database and returns a pool on it
// and a function that closes the pool and drops the database. It panics,
// saying how to provide a server, when there is none.
//
//	pool, drop := postboxtest.MustPool()
//	defer drop()
func MustPool() (*pgxpool.Pool, func()) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := NewDatabase(ctx)
	if err != nil {
		panic(err)
	}
	pool, err := pgxpool.New(ctx, d.URL)
	if err != nil {
		_ = d.Drop(ctx)
		panic(fmt.Errorf("postboxtest: open pool: %w", err))
	}
	return pool, func() {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := d.Drop(ctx); err != nil {
			panic(err)
		}
	}
}

var (
	serverMu  sync.Mutex
	serverURL string // the server found, once one answered
)

// findServer returns DATABASE_URL, else LocalURL, once one answers.
func findServer(ctx context.Context) (string, error) {
	serverMu.Lock()
	defer serverMu.Unlock()
	if serverURL != "" {
		return serverURL, nil
	}
	dsn, from, err := testdb.Server(ctx)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v\n%s", ErrNoServer, from, err, howTo)
	}
	serverURL = dsn
	return dsn, nil
}
