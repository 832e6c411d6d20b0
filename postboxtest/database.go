package postboxtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/schema"
)

// LocalURL is the server used when DATABASE_URL is not set.
const LocalURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// ErrNoServer is returned (wrapped, with what was tried and how to provide
// a server) when no PostgreSQL server answers.
var ErrNoServer = errors.New("postboxtest: no PostgreSQL server")

const howTo = `provide PostgreSQL 13 or newer in one of these ways:
  - set DATABASE_URL, e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
    (the user must be allowed to CREATE DATABASE);
  - run a server on 127.0.0.1:5432 that accepts user postgres.`

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
	admin, err := pgx.Connect(ctx, server)
	if err != nil {
		return nil, fmt.Errorf("postboxtest: connect: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	tmpl, err := ensureTemplate(ctx, admin, server)
	if err != nil {
		return nil, fmt.Errorf("postboxtest: template database: %w", err)
	}
	name := "postbox_test_" + randomHex(8)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+
		" TEMPLATE "+pgx.Identifier{tmpl}.Sanitize()); err != nil {
		return nil, fmt.Errorf("postboxtest: create database: %w", err)
	}
	dsn, err := withDatabase(server, name)
	if err != nil {
		return nil, err
	}
	return &Database{URL: dsn, Name: name, server: server}, nil
}

// Drop drops the database, closing whatever is still connected to it.
func (d *Database) Drop(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, d.server)
	if err != nil {
		return fmt.Errorf("postboxtest: drop %s: %w", d.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{d.Name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("postboxtest: drop %s: %w", d.Name, err)
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
	dsn, from := os.Getenv("DATABASE_URL"), "DATABASE_URL"
	if dsn == "" {
		dsn, from = LocalURL, "127.0.0.1:5432"
	}
	if err := ping(ctx, dsn); err != nil {
		return "", fmt.Errorf("%w: %s: %v\n%s", ErrNoServer, from, err, howTo)
	}
	serverURL = dsn
	return dsn, nil
}

func ping(ctx context.Context, dsn string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.Ping(ctx)
}

var (
	templateMu   sync.Mutex
	templateName string
)

// ensureTemplate returns the migrated template of the schema, creating it
// if it is missing. It is named by a digest of the migrations, so a
// changed schema gets a new one, never a stale one; the name and the lock
// are those of postbox's own tests (internal/pgtest), so the two share
// templates safely. Several test binaries may start at once: creation runs
// under an advisory lock, into a scratch name renamed only when complete.
func ensureTemplate(ctx context.Context, admin *pgx.Conn, server string) (string, error) {
	templateMu.Lock()
	defer templateMu.Unlock()
	if templateName != "" {
		return templateName, nil
	}
	name, err := digestName()
	if err != nil {
		return "", err
	}
	const lockKey = 0x706f7374626f78 // "postbox"
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return "", err
	}
	defer admin.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockKey)
	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", err
	}
	if !exists {
		if err := buildTemplate(ctx, admin, server, name); err != nil {
			return "", err
		}
	}
	templateName = name
	return name, nil
}

func buildTemplate(ctx context.Context, admin *pgx.Conn, server, name string) error {
	building := name + "_building"
	ident := pgx.Identifier{building}.Sanitize()
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
		return err
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+ident); err != nil {
		return err
	}
	dsn, err := withDatabase(server, building)
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return err
	}
	err = schema.Migrate(ctx, pool)
	pool.Close()
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	_, err = admin.Exec(ctx, "ALTER DATABASE "+ident+" RENAME TO "+pgx.Identifier{name}.Sanitize())
	return err
}

// digestName names the template by a digest of the migrations.
func digestName() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(schema.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(schema.FS, path)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", path, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		return "", err
	}
	return "postbox_tmpl_" + hex.EncodeToString(h.Sum(nil))[:16], nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// withDatabase returns connString with its database replaced by name, in
// either form: a URL gets its path replaced; in keyword/value form a
// dbname appended overrides any earlier one.
func withDatabase(connString, name string) (string, error) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return "", fmt.Errorf("postboxtest: parse the server's URL: %w", err)
		}
		u.Path, u.RawPath = "/"+name, ""
		return u.String(), nil
	}
	return strings.TrimSpace(connString + " dbname=" + name), nil
}
