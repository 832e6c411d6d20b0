// Package testdb makes throwaway PostgreSQL databases migrated to the
// postbox schema, for postboxtest (the public test helpers) and
// internal/pgtest (postbox's own tests) alike. Each database is a clone
// (CREATE DATABASE ... TEMPLATE) of a template migrated once per schema
// version, which costs a fraction of migrating anew.
//
// It finds no server beyond DATABASE_URL and LocalURL and knows nothing of
// testing.TB: each caller reports failures its own way, and pgtest adds
// its testcontainers fallback.
package testdb

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/schema"
)

// LocalURL is the server tried when DATABASE_URL is not set.
const LocalURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// HowTo says how to provide a server in the ways Server tries, as the
// start of a list a caller may extend (pgtest adds Docker).
const HowTo = `provide PostgreSQL 13 or newer in one of these ways:
  - set DATABASE_URL, e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
    (the user must be allowed to CREATE DATABASE);
  - run a server on 127.0.0.1:5432 that accepts user postgres`

// Server returns DATABASE_URL, else LocalURL, and whether it answers.
// from says which it tried ("DATABASE_URL" or "127.0.0.1:5432"), for
// messages.
func Server(ctx context.Context) (dsn, from string, err error) {
	dsn, from = os.Getenv("DATABASE_URL"), "DATABASE_URL"
	if dsn == "" {
		dsn, from = LocalURL, "127.0.0.1:5432"
	}
	return dsn, from, Ping(ctx, dsn)
}

// Ping connects to dsn and pings it, within five seconds.
func Ping(ctx context.Context, dsn string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.Ping(ctx)
}

// Create creates a fresh database migrated to the postbox schema on the
// server at server, and returns its name and connection string.
func Create(ctx context.Context, server string) (name, dsn string, err error) {
	admin, err := pgx.Connect(ctx, server)
	if err != nil {
		return "", "", fmt.Errorf("connect: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	tmpl, err := ensureTemplate(ctx, admin, server)
	if err != nil {
		return "", "", fmt.Errorf("template database: %w", err)
	}
	name = "postbox_test_" + randomHex(8)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+
		" TEMPLATE "+pgx.Identifier{tmpl}.Sanitize()); err != nil {
		return "", "", fmt.Errorf("create database: %w", err)
	}
	if dsn, err = withDatabase(server, name); err != nil {
		return "", "", err
	}
	return name, dsn, nil
}

// Drop drops database name on the server at server, closing whatever is
// still connected to it.
func Drop(ctx context.Context, server, name string) error {
	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		return fmt.Errorf("drop %s: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop %s: %w", name, err)
	}
	return nil
}

var (
	templateMu   sync.Mutex
	templateName string // once made or found; a failure is tried again
)

// ensureTemplate returns the migrated template of the schema, creating it
// if it is missing. It is named by a digest of the migrations, so a
// changed schema gets a new one, never a stale one. Several test binaries
// may start at once: creation runs under an advisory lock, into a scratch
// name renamed only when complete.
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
			return "", fmt.Errorf("parse the server's URL: %w", err)
		}
		u.Path, u.RawPath = "/"+name, ""
		return u.String(), nil
	}
	return strings.TrimSpace(connString + " dbname=" + name), nil
}
