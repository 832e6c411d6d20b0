package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
)

// doctorArgs are the arguments every doctor test passes: on a server that
// runs without autovacuum (this project's CI does), that check would fail
// every database, so it is left out there, and tested on its own below.
func doctorArgs(t *testing.T, pool *pgxpool.Pool, args ...string) []string {
	t.Helper()
	var on string
	if err := pool.QueryRow(context.Background(), "SHOW autovacuum").Scan(&on); err != nil {
		t.Fatal(err)
	}
	if on != "on" {
		args = append(args, "--skip", "autovacuum")
	}
	return append([]string{"doctor"}, args...)
}

// doctorFails runs the doctor, wants exit 1 and a FAIL line of check that
// contains every one of want, and returns stdout.
func doctorFails(t *testing.T, url string, pool *pgxpool.Pool, check string, want []string, args ...string) string {
	t.Helper()
	res := run(t, []string{"POSTBOX_DATABASE_URL=" + url}, doctorArgs(t, pool, args...)...)
	if res.code != 1 {
		t.Fatalf("doctor: exit %d, want 1\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	}
	for _, line := range strings.Split(res.stdout, "\n") {
		if !strings.HasPrefix(line, "FAIL  "+check+" ") {
			continue
		}
		all := true
		for _, w := range want {
			all = all && strings.Contains(line, w)
		}
		if all {
			return res.stdout
		}
	}
	t.Fatalf("doctor: no FAIL line of %s with %q:\n%s", check, want, res.stdout)
	return ""
}

func TestDoctorHealthyDatabase(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	pool := openPool(t, url)
	subscribe(t, pool, "orders.created", "billing")
	res := run(t, []string{"POSTBOX_DATABASE_URL=" + url}, doctorArgs(t, pool)...)
	if res.code != 0 {
		t.Fatalf("doctor on a healthy database: exit %d\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	}
	for _, check := range doctorChecks {
		if !strings.Contains(res.stdout, " "+check+" ") {
			t.Errorf("no line for %s:\n%s", check, res.stdout)
		}
	}
	if strings.Contains(res.stdout, "FAIL") {
		t.Errorf("a FAIL line on a healthy database:\n%s", res.stdout)
	}

	var rep doctorReport
	runJSON(t, url, &rep, doctorArgs(t, pool)...)
	if !rep.OK || len(rep.Checks) != len(doctorChecks) {
		t.Errorf("doctor --json = %+v", rep)
	}
}

// A transaction held open in another session, longer than --xact-age.
func TestDoctorLongTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	pool := openPool(t, url)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT txid_current() /* doctor test */"); err != nil {
		t.Fatal(err)
	}
	pid := conn.PgConn().PID()
	pgtest.WaitFor(t, ctx, 10*time.Second, "the transaction to be 300ms old", func() bool {
		return pgtest.Count(t, ctx, pool, `SELECT count(*) FROM pg_stat_activity
			WHERE pid = $1 AND xact_start < now() - interval '300 milliseconds'`, pid) == 1
	})
	out := doctorFails(t, url, pool, "long-transactions", []string{fmt.Sprintf("pid %d", pid), "txid_current()", "whole cluster"},
		"--xact-age", "200ms")
	if !strings.Contains(out, "ok    dead-tuples") {
		t.Errorf("the other checks should pass:\n%s", out)
	}

	// --json says the same.
	res := run(t, []string{"POSTBOX_DATABASE_URL=" + url}, doctorArgs(t, pool, "--xact-age", "200ms", "--json")...)
	var rep doctorReport
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil || res.code != 1 || rep.OK {
		t.Fatalf("doctor --json: exit %d, %v\n%s", res.code, err, res.stdout)
	}
	found := false
	for _, c := range rep.Checks {
		for _, p := range c.Problems {
			found = found || c.Check == "long-transactions" && p.Detail["pid"] == float64(pid)
		}
	}
	if !found {
		t.Errorf("doctor --json names no pid %d:\n%s", pid, res.stdout)
	}

	// Once it ends, all is well again.
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	res = run(t, []string{"POSTBOX_DATABASE_URL=" + url}, doctorArgs(t, pool, "--xact-age", "10m")...)
	if res.code != 0 {
		t.Errorf("after the transaction ended: exit %d\n%s", res.code, res.stdout)
	}
}

func TestDoctorFindsProblems(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		check string
		want  []string
		args  []string
		make  func(t *testing.T, ctx context.Context, pool *pgxpool.Pool)
	}{
		{"dead-tuples", []string{"postbox.dead_letters", "dead rows", "never vacuumed"}, []string{"--dead-tuples", "1000"},
			func(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
				sqlExec(t, pool, "ALTER TABLE postbox.dead_letters SET (autovacuum_enabled = off)")
				// In a session of its own, which reports its statistics as it ends.
				conn := pgtest.Connect(t, pool, 1)
				sqlExec(t, conn, `INSERT INTO postbox.dead_letters (subscriber, message_id, part, seq, key_hash, topic, payload, created_at)
					SELECT 'x', gen_random_uuid(), 0, g, 0, 'x', '\x00', now() FROM generate_series(1, 3000) g`)
				sqlExec(t, conn, "DELETE FROM postbox.dead_letters")
				conn.Close()
				pgtest.WaitFor(t, ctx, 20*time.Second, "the statistics to count the dead rows", func() bool {
					return pgtest.Count(t, ctx, pool, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'dead_letters'") >= 3000
				})
			}},
		{"bloat", []string{"postbox.parked", "live rows fill about"}, []string{"--bloat-min-size", "1MB"},
			func(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
				sqlExec(t, pool, `INSERT INTO postbox.parked (subscriber, message_id, part, seq, key_hash, reason, topic, payload,
					available_at, created_at, enqueued_at)
					SELECT 'x', gen_random_uuid(), 0, g, 0, 'retry', 'x', '\x00', now(), now(), now() FROM generate_series(1, 30000) g`)
				sqlExec(t, pool, "DELETE FROM postbox.parked WHERE seq % 60 <> 0") // a row a page or so stays: no empty tail to cut off
				sqlExec(t, pool, "VACUUM ANALYZE postbox.parked")                  // the space stays with the table
			}},
		{"relay", []string{"due outbox messages wait", "no relay is moving them"}, nil,
			func(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
				subscribe(t, pool, "orders.created", "billing")
				sqlExec(t, pool, `INSERT INTO postbox.outbox (message_id, key_hash, topic, payload, created_at)
					VALUES (gen_random_uuid(), 1, 'orders.created', '{}', now() - interval '10 minutes')`)
			}},
		{"consumers", []string{"subscriber billing", "is a consumer running?"}, []string{"--lag", "5m"},
			func(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
				subscribe(t, pool, "orders.created", "billing")
				sqlExec(t, pool, `INSERT INTO postbox.inbox (subscriber, part, message_id, key_hash, topic, payload, available_at, created_at, enqueued_at)
					VALUES ('billing', 3, gen_random_uuid(), 3, 'orders.created', '{}', now(), now(), now() - interval '10 minutes')`)
			}},
		{"blocked-keys", []string{"subscriber billing", `key "order-7"`, "failed 5 times", "warehouse on fire"}, nil,
			func(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
				subscribe(t, pool, "orders.created", "billing")
				sqlExec(t, pool, `INSERT INTO postbox.parked (subscriber, message_id, part, seq, key_hash, attempts, reason, topic, key, payload,
					available_at, created_at, enqueued_at, last_error, last_error_at)
					VALUES ('billing', gen_random_uuid(), 1, 1, 1, 5, 'retry', 'orders.created', 'order-7', '{}', now() + interval '1 minute',
					        now(), now(), 'warehouse on fire', now()),
					       ('billing', gen_random_uuid(), 1, 2, 1, 0, 'blocked', 'orders.created', 'order-7', '{}', 'infinity',
					        now(), now(), NULL, NULL)`)
			}},
		{"no-route", []string{`"payments"`, "postbox queue declare payments"}, nil,
			func(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
				send(t, pool, "payments", 2)
				pgtest.Drain(t, ctx, pool)
			}},
		{"quarantine", []string{"quarantined 1 outbox rows"}, nil,
			func(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
				sqlExec(t, pool, `INSERT INTO postbox.dead_letters (subscriber, message_id, part, seq, key_hash, topic, payload, created_at, last_error)
					VALUES ('_relay', gen_random_uuid(), 0, 1, 0, 'orders.created', '{}', now(), 'relay: value too long')`)
			}},
		{"dropped-topics", []string{`topic "nobody.listens"`, "no subscription"}, nil,
			func(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
				subscribe(t, pool, "orders.#", "billing")
				if err := outbox.Publish(ctx, pool, &postbox.Message{Topic: "nobody.listens", Payload: []byte(`{}`)}); err != nil {
					t.Fatal(err)
				}
			}},
		{"replication-slots", []string{"replication slot", "keeps", "pg_drop_replication_slot"}, []string{"--slot-wal", "1"},
			func(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
				b := make([]byte, 6)
				rand.Read(b)
				slot := "postbox_doctor_" + hex.EncodeToString(b)
				sqlExec(t, pool, "SELECT pg_create_physical_replication_slot($1, true)", slot)
				t.Cleanup(func() { pool.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", slot) })
				sqlExec(t, pool, "CREATE TABLE wal_maker AS SELECT g FROM generate_series(1, 1000) g") // some WAL past the slot
			}},
		{"timeouts", []string{"idle_in_transaction_session_timeout", "1s", "batch budget of 5s"}, nil,
			func(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
				var name string
				if err := pool.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
					t.Fatal(err)
				}
				sqlExec(t, pool, "ALTER DATABASE "+pgx.Identifier{name}.Sanitize()+" SET idle_in_transaction_session_timeout = '1s'")
			}},
		{"autovacuum", []string{"autovacuum is off for postbox.processed"}, nil,
			func(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
				sqlExec(t, pool, "ALTER TABLE postbox.processed SET (autovacuum_enabled = false)")
			}},
	} {
		t.Run(tc.check, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			url := pgtest.URL(t)
			pool := openPool(t, url)
			tc.make(t, ctx, pool)
			args := tc.args
			if tc.check == "autovacuum" {
				// The check under test runs even where the server has autovacuum off.
				res := run(t, []string{"POSTBOX_DATABASE_URL=" + url}, append([]string{"doctor"}, args...)...)
				if res.code != 1 || !strings.Contains(res.stdout, "FAIL  autovacuum") || !strings.Contains(res.stdout, tc.want[0]) {
					t.Fatalf("doctor: exit %d\n%s", res.code, res.stdout)
				}
				return
			}
			doctorFails(t, url, pool, tc.check, tc.want, args...)
		})
	}
}

// The server's own autovacuum setting, where it is off (as in this
// project's CI): the doctor says so.
func TestDoctorServerAutovacuum(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	pool := openPool(t, url)
	var on string
	if err := pool.QueryRow(context.Background(), "SHOW autovacuum").Scan(&on); err != nil {
		t.Fatal(err)
	}
	res := run(t, []string{"POSTBOX_DATABASE_URL=" + url}, "doctor")
	line := strings.Contains(res.stdout, "FAIL  autovacuum         autovacuum is off on this server")
	if (on == "off") != line || (on == "off") != (res.code == 1) {
		t.Errorf("server autovacuum %s: exit %d\n%s", on, res.code, res.stdout)
	}
}

func TestDoctorUsage(t *testing.T) {
	t.Parallel()
	db := []string{"POSTBOX_DATABASE_URL=postgres://postgres@127.0.0.1:1/none"}
	for _, args := range [][]string{
		{"doctor", "--skip", "nonsense"},
		{"doctor", "--xact-age", "0s"},
		{"doctor", "--slot-wal", "lots"},
		{"doctor", "--dead-ratio", "2"},
	} {
		if res := run(t, db, args...); res.code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", args, res.code, res.stderr)
		}
	}
}

func sqlExec(t *testing.T, db *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := db.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
