package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/schema"
)

func TestMigrateUpOnAFreshDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	pool := openPool(t, url)
	if err := schema.Reset(ctx, pool); err != nil {
		t.Fatal(err)
	}
	functions := func() int {
		var n int
		err := pool.QueryRow(ctx, `
			SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
			WHERE n.nspname = 'postbox' AND p.proname IN ('replay_dead_letters', 'purge_dead_letters')`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := functions(); n != 0 {
		t.Fatalf("after schema.Reset, %d dead-letter functions remain", n)
	}

	var status []struct {
		Version int64 `json:"version"`
		Applied bool  `json:"applied"`
	}
	runJSON(t, url, &status, "migrate", "status")
	if len(status) == 0 || status[0].Applied {
		t.Fatalf("status on an empty database = %+v, want the first migration pending", status)
	}

	out := runOK(t, url, "migrate", "up")
	if !strings.Contains(out, "applied 1 ") {
		t.Errorf("migrate up printed %q, want it to name migration 1", out)
	}
	if n := functions(); n != 2 {
		t.Fatalf("after migrate up, %d of the 2 functions replay_dead_letters and purge_dead_letters exist", n)
	}
	if out := runOK(t, url, "migrate", "up"); !strings.Contains(out, "nothing to do") {
		t.Errorf("second migrate up printed %q, want nothing to do", out)
	}
	runJSON(t, url, &status, "migrate", "status")
	for _, m := range status {
		if !m.Applied {
			t.Errorf("migration %d not applied after migrate up", m.Version)
		}
	}

	// down needs --yes.
	if res := run(t, []string{"POSTBOX_DATABASE_URL=" + url}, "migrate", "down"); res.code != 2 {
		t.Fatalf("migrate down without --yes: exit %d, want 2", res.code)
	}
	if n := functions(); n != 2 {
		t.Fatal("migrate down without --yes changed the schema")
	}
	// Each down rolls back the latest migration, down to version 1 and
	// then 0, which drops the schema.
	for v := len(status); v >= 1; v-- {
		out := runOK(t, url, "migrate", "down", "--yes")
		if !strings.Contains(out, fmt.Sprintf("rolled back %d ", v)) || !strings.Contains(out, fmt.Sprintf("schema version %d", v-1)) {
			t.Errorf("migrate down printed %q, want migration %d rolled back, at version %d", out, v, v-1)
		}
		want := 2 // the dead-letter functions, from version 1 on
		if v == 1 {
			want = 0
		}
		if n := functions(); n != want {
			t.Fatalf("at version %d, %d dead-letter functions exist, want %d", v-1, n, want)
		}
	}
	runJSON(t, url, &status, "migrate", "status")
	for _, m := range status {
		if m.Applied {
			t.Errorf("migration %d still applied after migrating all the way down", m.Version)
		}
	}
}
