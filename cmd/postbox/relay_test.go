package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// publish writes n messages for topic in batches, with keys spread over
// 100 values.
func publish(t *testing.T, pool *pgxpool.Pool, topic string, n int) {
	t.Helper()
	ctx := context.Background()
	const batch = 10_000
	for i := 0; i < n; i += batch {
		msgs := make([]*postbox.Message, 0, min(batch, n-i))
		for j := i; j < min(i+batch, n); j++ {
			msgs = append(msgs, &postbox.Message{
				Topic: topic, Type: "order.created.v1", Key: fmt.Sprintf("order-%d", j%100),
				Payload: fmt.Appendf(nil, `{"n":%d}`, j),
			})
		}
		if err := outbox.PublishBatch(ctx, pool, msgs); err != nil {
			t.Fatal(err)
		}
	}
}

func subscribe(t *testing.T, pool *pgxpool.Pool, topic string, subscribers ...string) {
	t.Helper()
	for _, s := range subscribers {
		if err := dispatcher.Subscribe(context.Background(), pool, dispatcher.Subscription{Subscriber: s, Topic: topic}); err != nil {
			t.Fatal(err)
		}
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// metric returns the value of the sample named exactly series (name plus
// labels as exposed), or -1 if it is missing.
func metric(body, series string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return -1
	}
	return v
}

// stop sends SIGTERM and returns how long the process took to exit.
func (p *process) stop(t *testing.T) time.Duration {
	t.Helper()
	began := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("relay still running 15s after SIGTERM:\n%s", p.log())
	}
	took := time.Since(began)
	if p.err != nil {
		t.Fatalf("relay after SIGTERM: %v (want exit 0)\n%s", p.err, p.log())
	}
	return took
}

func TestRelayServesHealthReadinessAndMetrics(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	pool := openPool(t, url)
	subscribe(t, pool, "order.created", "billing", "shipping")
	publish(t, pool, "order.created", 100)
	// A send to a queue nobody declared: a no-route dead letter.
	if err := outbox.Send(ctx, pool, &postbox.Message{Topic: "payments", Payload: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}

	p := startBinary(t, url, "relay", "--http", "127.0.0.1:0", "--log-format", "json", "--poll-interval", "10ms")
	addr := p.waitLog(t, "http listening", "addr")
	base := "http://" + addr

	pgtest.WaitFor(t, ctx, 10*time.Second, "/readyz 200", func() bool { code, _ := get(t, base+"/readyz"); return code == 200 })
	if code, body := get(t, base+"/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz = %d %q, want 200 ok", code, body)
	}
	var body string
	pgtest.WaitFor(t, ctx, 10*time.Second, "the relay to move all 101 messages", func() bool {
		_, body = get(t, base+"/metrics")
		return metric(body, "postbox_relay_messages_total") == 101
	})
	for series, want := range map[string]float64{
		"postbox_relay_deliveries_total":                            200,
		"postbox_relay_no_route_total":                              1,
		"postbox_relay_dropped_total":                               0,
		"postbox_relay_errors_total":                                0,
		"postbox_outbox_pending":                                    0,
		"postbox_relay_lag_seconds":                                 0,
		"postbox_database_up":                                       1,
		`postbox_inbox_depth{state="ready",subscriber="billing"}`:   100,
		`postbox_inbox_depth{state="waiting",subscriber="billing"}`: 0,
		`postbox_inbox_depth{state="ready",subscriber="shipping"}`:  100,
		`postbox_dead_letters{subscriber="billing"}`:                0,
		`postbox_dead_letters{subscriber="payments"}`:               1,
		"postbox_relay_quarantined_total":                           0,
	} {
		t.Run(series, func(t *testing.T) {
			if got := metric(body, series); got != want {
				t.Errorf("%s = %v, want %v", series, got, want)
			}
		})
	}
	if got := metric(body, "postbox_relay_batches_total"); got < 1 {
		t.Errorf("postbox_relay_batches_total = %v, want at least 1", got)
	}
	if got := metric(body, "postbox_relay_slots_emptied_total"); got < 0 {
		t.Errorf("postbox_relay_slots_emptied_total missing")
	}
	// The relay succeeded and moved messages within this test's lifetime.
	now := float64(time.Now().Unix())
	for _, series := range []string{"postbox_relay_last_success_timestamp_seconds", "postbox_relay_last_moved_timestamp_seconds"} {
		if got := metric(body, series); got < now-60 || got > now+60 {
			t.Errorf("%s = %v, want about now (%v)", series, got, now)
		}
	}
	if !strings.Contains(body, "# TYPE postbox_relay_messages_total counter") {
		t.Error("postbox_relay_messages_total is not exposed as a counter")
	}

	// The database stops answering: /healthz says so, /readyz does not
	// (restarting the relay would not help), and both recover.
	db := openAdmin(t, url)
	setConnections(t, db, false)
	pgtest.WaitFor(t, ctx, 10*time.Second, "/healthz 503 while the database refuses connections", func() bool {
		code, _ := get(t, base+"/healthz")
		return code == http.StatusServiceUnavailable
	})
	setConnections(t, db, true)
	pgtest.WaitFor(t, ctx, 10*time.Second, "/healthz 200 again", func() bool { code, _ := get(t, base+"/healthz"); return code == 200 })

	if took := p.stop(t); took > 10*time.Second {
		t.Errorf("relay took %s to stop", took)
	}
	if !strings.Contains(p.log(), `"msg":"stopped"`) {
		t.Errorf("no 'stopped' log line:\n%s", p.log())
	}
}

// adminConn is a connection to the server's maintenance database, from
// which the test database's connections are refused and ended.
type adminConn struct {
	conn *pgx.Conn
	db   string // the test database
}

func openAdmin(t *testing.T, url string) *adminConn {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	db := cfg.Database
	cfg.Database = "postgres"
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return &adminConn{conn: conn, db: db}
}

// setConnections allows or refuses new connections to the test database;
// when refusing, it also ends the relay's open connections.
func setConnections(t *testing.T, a *adminConn, allow bool) {
	t.Helper()
	ctx := context.Background()
	alter := "ALTER DATABASE " + pgx.Identifier{a.db}.Sanitize() + " ALLOW_CONNECTIONS "
	if _, err := a.conn.Exec(ctx, alter+strconv.FormatBool(allow)); err != nil {
		t.Fatal(err)
	}
	if allow {
		return
	}
	t.Cleanup(func() { a.conn.Exec(context.Background(), alter+"true") })
	if _, err := a.conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = $1 AND application_name = 'postbox-relay'`, a.db); err != nil {
		t.Fatal(err)
	}
}

func TestRelaySIGTERMUnderLoadLosesAndDuplicatesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 50_000
	url := pgtest.URL(t)
	pool := openPool(t, url)
	subscribe(t, pool, "order.created", "billing", "shipping")
	publish(t, pool, "order.created", n)

	p := startBinary(t, url, "relay", "--batch-size", "500", "--log-format", "json", "--janitor-interval", "0")
	// Stop it in full stride: batches follow each other without pause
	// while the backlog lasts, so SIGTERM almost surely lands mid-batch.
	pgtest.WaitFor(t, ctx, 30*time.Second, "the relay to move 10,000 messages", func() bool {
		return pgtest.Count(t, ctx, pool, "SELECT count(*) FROM (SELECT 1 FROM postbox.inbox LIMIT 20000) x") == 20000
	})
	took := p.stop(t)
	if took > 10*time.Second {
		t.Errorf("relay took %s to exit after SIGTERM, want under 10s", took)
	}
	left := pgtest.Count(t, ctx, pool, "SELECT count(*) FROM postbox.outbox")
	t.Logf("relay stopped %s after SIGTERM with %d of %d messages still in the outbox", took, left, n)
	if left == 0 {
		t.Fatal("the relay moved everything before SIGTERM arrived: the test did not stop it under load")
	}

	// Another relay finishes the job.
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if left := pgtest.Count(t, ctx, pool, "SELECT count(*) FROM postbox.outbox"); left != 0 {
		t.Fatalf("%d messages left in the outbox after Drain", left)
	}
	rows, err := pool.Query(ctx, `SELECT subscriber, count(*), count(DISTINCT message_id) FROM postbox.inbox GROUP BY subscriber ORDER BY subscriber`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][2]int{}
	for rows.Next() {
		var s string
		var rowsN, distinct int
		if err := rows.Scan(&s, &rowsN, &distinct); err != nil {
			t.Fatal(err)
		}
		got[s] = [2]int{rowsN, distinct}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := map[string][2]int{"billing": {n, n}, "shipping": {n, n}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("inbox rows (total, distinct message IDs) per subscriber = %v, want %v", got, want)
	}
	if total := pgtest.Count(t, ctx, pool, "SELECT count(*) FROM postbox.inbox"); total != 2*n {
		t.Fatalf("inbox holds %d rows, want %d", total, 2*n)
	}
}
