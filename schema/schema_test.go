package schema_test

import (
	"context"
	"io/fs"
	"strings"
	"testing"

	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/schema"
)

// Every migration is a goose SQL file with an Up and a Down section.
func TestMigrationFilesAreReversible(t *testing.T) {
	t.Parallel()
	files, err := fs.Glob(schema.FS, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("schema.FS holds no migrations")
	}
	for _, f := range files {
		b, err := fs.ReadFile(schema.FS, f)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		up, down := strings.Index(s, "-- +goose Up"), strings.Index(s, "-- +goose Down")
		if up < 0 || down < up {
			t.Errorf("%s: want a '-- +goose Up' section followed by a '-- +goose Down' section", f)
		}
		if strings.Count(s, "+goose StatementBegin") != strings.Count(s, "+goose StatementEnd") {
			t.Errorf("%s: unbalanced StatementBegin/StatementEnd", f)
		}
	}
}

func TestStatusDownAndMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)

	st, err := schema.Status(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	files, _ := fs.Glob(schema.FS, "*.sql")
	if len(st) != len(files) {
		t.Fatalf("Status lists %d migrations, schema.FS holds %d", len(st), len(files))
	}
	for i, m := range st {
		if !m.Applied || m.Version != int64(i+1) || !strings.HasSuffix(m.Name, ".sql") {
			t.Errorf("Status[%d] = %+v, want version %d applied", i, m, i+1)
		}
	}

	// Down removes the latest migration; with everything down no postbox
	// object is left behind.
	if err := schema.Reset(ctx, pool); err != nil {
		t.Fatal(err)
	}
	var objects int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'postbox'`).Scan(&objects); err != nil {
		t.Fatal(err)
	}
	if objects != 0 {
		t.Errorf("%d relations left in schema postbox after Reset", objects)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'postbox'`).Scan(&objects); err != nil {
		t.Fatal(err)
	}
	if objects != 0 {
		t.Errorf("%d functions left in schema postbox after Reset", objects)
	}
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	// Migrate twice is a no-op.
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	st, err = schema.Status(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st {
		if !m.Applied {
			t.Errorf("after Migrate: %+v not applied", m)
		}
	}
}

// A postbox schema that also holds a table of the user's is not dropped:
// Reset fails at the first migration's down, which rolls back whole (the
// later migrations' downs have run, each in its own transaction, keeping
// the data), and Migrate brings the schema back up.
func TestResetLeavesUsersObjectsAlone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)
	if _, err := pool.Exec(ctx, `CREATE TABLE postbox.mine (id int); INSERT INTO postbox.subscribers (name, kind) VALUES ('billing', 'queue')`); err != nil {
		t.Fatal(err)
	}
	if err := schema.Reset(ctx, pool); err == nil {
		t.Fatal("Reset dropped a schema holding a user's table")
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM postbox.subscribers`).Scan(&n); err != nil || n != 1 {
		t.Errorf("after the failed Reset: subscribers = %d (%v), want the row kept", n, err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM postbox.mine`).Scan(&n); err != nil {
		t.Errorf("the user's table is gone: %v", err)
	}
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	st, err := schema.Status(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st {
		if !m.Applied {
			t.Errorf("after the failed Reset and Migrate: %+v not applied", m)
		}
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM postbox.subscribers`).Scan(&n); err != nil || n != 1 {
		t.Errorf("after Migrate: subscribers = %d (%v), want the row kept", n, err)
	}
}
