// Package pgtest gives each test a fresh PostgreSQL database of its own,
// already migrated to the postbox schema, so tests run in parallel.
//
// The server comes from DATABASE_URL, else a server on 127.0.0.1:5432 as
// user postgres, else a container started with testcontainers-go. When none
// works the test fails with a message saying how to provide one; it never
// skips.
//
// Each database is cloned from a template migrated once per schema version
// (CREATE DATABASE ... TEMPLATE), which costs a fraction of migrating anew,
// and is dropped when the test ends.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/postbox-dev/postbox/schema"
)

// LocalURL is the server tried when DATABASE_URL is not set.
const LocalURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

const howTo = `provide PostgreSQL 13 or newer in one of these ways:
  - set DATABASE_URL, e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
    (the user must be allowed to CREATE DATABASE);
  - run a server on 127.0.0.1:5432 that accepts user postgres;
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
	var tried []string
	if url := os.Getenv("DATABASE_URL"); url != "" {
		if err := ping(ctx, url); err != nil {
			return "", fmt.Errorf("DATABASE_URL is set but does not answer: %w\n%s", err, howTo)
		}
		return url, nil
	}
	if err := ping(ctx, LocalURL); err == nil {
		return LocalURL, nil
	} else {
		tried = append(tried, "127.0.0.1:5432: "+err.Error())
	}
	url, err := startContainer(ctx)
	if err == nil {
		return url, nil
	}
	tried = append(tried, "testcontainers: "+err.Error())
	return "", fmt.Errorf("no PostgreSQL server found (tried: %s)\n%s", strings.Join(tried, "; "), howTo)
}

func ping(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.Ping(ctx)
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

// templateName names the template by a digest of the migrations, so a
// changed schema gets a new template and never a stale one.
func templateName() (string, error) {
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

var (
	templateOnce sync.Once
	template     string
	templateErr  error
)

// ensureTemplate creates the migrated template database if it is missing.
// Test binaries of several packages run at once, so creation happens under
// an advisory lock, into a scratch name that is renamed only when complete.
func ensureTemplate(ctx context.Context, admin *pgx.Conn, serverURL string) (string, error) {
	templateOnce.Do(func() {
		template, templateErr = buildTemplate(ctx, admin, serverURL)
	})
	return template, templateErr
}

func buildTemplate(ctx context.Context, admin *pgx.Conn, serverURL string) (string, error) {
	name, err := templateName()
	if err != nil {
		return "", err
	}
	const lockKey = 0x706f7374626f78 // "postbox"
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return "", err
	}
	defer admin.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", lockKey)

	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", err
	}
	if exists {
		return name, nil
	}
	building := name + "_building"
	ident := pgx.Identifier{building}.Sanitize()
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
		return "", err
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+ident); err != nil {
		return "", err
	}
	pool, err := pgxpool.New(ctx, replaceDatabase(serverURL, building))
	if err != nil {
		return "", err
	}
	err = schema.Migrate(ctx, pool)
	pool.Close()
	if err != nil {
		return "", fmt.Errorf("migrate template: %w", err)
	}
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+ident+" RENAME TO "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", err
	}
	return name, nil
}

// URL creates a fresh migrated database for t and returns its connection
// string. The database is dropped when t ends.
func URL(t testing.TB) string {
	t.Helper()
	url, err := server()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("pgtest: connect to %s: %v", redact(url), err)
	}
	defer admin.Close(context.Background())
	tmpl, err := ensureTemplate(ctx, admin, url)
	if err != nil {
		t.Fatalf("pgtest: template database: %v", err)
	}
	name := "postbox_test_" + randomHex(8)
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize() + " TEMPLATE " + pgx.Identifier{tmpl}.Sanitize()
	if _, err := admin.Exec(ctx, sql); err != nil {
		t.Fatalf("pgtest: create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Errorf("pgtest: drop %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop %s: %v", name, err)
		}
	})
	return replaceDatabase(url, name)
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

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// replaceDatabase swaps the database of a postgres:// URL or of a
// keyword/value connection string.
func replaceDatabase(url, name string) string {
	if strings.HasPrefix(url, "postgres://") || strings.HasPrefix(url, "postgresql://") {
		rest := url[strings.Index(url, "://")+3:]
		query := ""
		if i := strings.IndexByte(rest, '?'); i >= 0 {
			rest, query = rest[:i], rest[i:]
		}
		prefix := url[:strings.Index(url, "://")+3]
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			rest = rest[:i]
		}
		return prefix + rest + "/" + name + query
	}
	// keyword/value form: drop any dbname and append ours.
	fields := strings.Fields(url)
	kept := fields[:0]
	for _, f := range fields {
		if !strings.HasPrefix(f, "dbname=") {
			kept = append(kept, f)
		}
	}
	return strings.Join(append(kept, "dbname="+name), " ")
}

// redact hides a password in a connection string for messages.
func redact(url string) string {
	cfg, err := pgx.ParseConfig(url)
	if err != nil || cfg.Password == "" {
		return url
	}
	return strings.ReplaceAll(url, cfg.Password, "xxxxx")
}
