package dlq_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/dlq"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// base is when the fixtures' letters died, give or take some minutes.
var base = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func at(minutes int) time.Time { return base.Add(time.Duration(minutes) * time.Minute) }

// letter is a fixture row written straight into postbox.inbox.
type letter struct {
	sub      string
	typ      string
	err      string
	deadAt   time.Time
	attempts int
	key      string
	headers  map[string]string
	pending  bool // a pending row, which no dlq call may ever touch
	id       uuid.UUID
}

// insert writes the letters and fills in their IDs.
func insert(t *testing.T, pool *pgxpool.Pool, letters ...*letter) {
	t.Helper()
	ctx := context.Background()
	for _, l := range letters {
		l.id = postbox.NewID()
		status := "dead"
		deadAt := &l.deadAt
		if l.pending {
			status, deadAt = "pending", nil
		}
		var key *string
		if l.key != "" {
			key = &l.key
		}
		var headers *string
		if l.headers != nil {
			b, err := json.Marshal(l.headers)
			if err != nil {
				t.Fatal(err)
			}
			s := string(b)
			headers = &s
		}
		attempts := l.attempts
		if attempts == 0 {
			attempts = 10
		}
		_, err := pool.Exec(ctx, `
			INSERT INTO postbox.inbox (subscriber, message_id, partition, status, topic, type, key,
			                           payload, headers, created_at, attempts, last_error, last_error_at, dead_at)
			VALUES ($1, $2, 0, $3, 'orders', $4, $5, $6, $7::jsonb, $8, $9, $10, $8, $11)`,
			l.sub, l.id, status, l.typ, key, []byte(fmt.Sprintf(`{"letter":%q}`, l.id)), headers,
			l.deadAt.Add(-time.Hour), attempts, l.err, deadAt)
		if err != nil {
			t.Fatalf("insert fixture: %v", err)
		}
	}
}

// row is what the tests read back from postbox.inbox.
type row struct {
	status      string
	attempts    int
	replayCount int
	headers     map[string]string
	lastError   *string
	deadAt      *time.Time
	available   bool // available_at <= now()
}

// get reads a row of postbox.inbox; ok is false when there is none.
func get(t *testing.T, db postbox.DBTX, sub string, id uuid.UUID) (r row, ok bool) {
	t.Helper()
	var headers []byte
	err := db.QueryRow(context.Background(), `
		SELECT status, attempts, replay_count, headers, last_error, dead_at, available_at <= now()
		FROM postbox.inbox WHERE subscriber = $1 AND message_id = $2`, sub, id).
		Scan(&r.status, &r.attempts, &r.replayCount, &headers, &r.lastError, &r.deadAt, &r.available)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false
	}
	if err != nil {
		t.Fatal(err)
	}
	if headers != nil {
		if err := json.Unmarshal(headers, &r.headers); err != nil {
			t.Fatal(err)
		}
	}
	return r, true
}

// checkReplayed asserts that a letter is pending after its n-th replay.
func checkReplayed(t *testing.T, db postbox.DBTX, sub string, id uuid.UUID, n int) {
	t.Helper()
	r, ok := get(t, db, sub, id)
	if !ok {
		t.Fatalf("%s/%s: row gone, want replayed", sub, id)
	}
	if r.status != "pending" || r.attempts != 0 || r.replayCount != n || r.deadAt != nil || !r.available {
		t.Fatalf("%s/%s after replay %d: %+v, want pending, attempts 0, replay_count %d, no dead_at, available",
			sub, id, n, r, n)
	}
	if got := r.headers[postbox.HeaderReplayCount]; got != fmt.Sprint(n) {
		t.Fatalf("%s/%s: %s = %q, want %q", sub, id, postbox.HeaderReplayCount, got, fmt.Sprint(n))
	}
	replayedAt, err := time.Parse(time.RFC3339Nano, r.headers[postbox.HeaderReplayedAt])
	if err != nil {
		t.Fatalf("%s/%s: %s: %v", sub, id, postbox.HeaderReplayedAt, err)
	}
	if d := time.Since(replayedAt); d < -time.Minute || d > time.Minute {
		t.Fatalf("%s/%s: %s = %s, not about now", sub, id, postbox.HeaderReplayedAt, replayedAt)
	}
}

// checkDead asserts that a letter is still dead and untouched.
func checkDead(t *testing.T, db postbox.DBTX, l *letter) {
	t.Helper()
	r, ok := get(t, db, l.sub, l.id)
	if !ok {
		t.Fatalf("%s/%s (%q): row gone, want still dead", l.sub, l.id, l.err)
	}
	if r.status != "dead" || r.replayCount != 0 || r.attempts != 10 || r.deadAt == nil || !r.deadAt.Equal(l.deadAt) {
		t.Fatalf("%s/%s (%q): %+v, want untouched dead letter", l.sub, l.id, l.err, r)
	}
}

// replayRow is one postbox.replays record.
type replayRow struct {
	attempts  int
	lastError *string
}

// replayLog returns the postbox.replays rows of a message, oldest first.
func replayLog(t *testing.T, db postbox.DBTX, sub string, id uuid.UUID) []replayRow {
	t.Helper()
	rows, err := db.Query(context.Background(), `
		SELECT attempts, last_error FROM postbox.replays
		WHERE subscriber = $1 AND message_id = $2 ORDER BY id`, sub, id)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (replayRow, error) {
		var x replayRow
		err := r.Scan(&x.attempts, &x.lastError)
		return x, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func scalar(t *testing.T, db postbox.DBTX, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// kill makes a replayed letter dead again, as the inbox would after new
// failures.
func kill(t *testing.T, db postbox.DBTX, sub string, id uuid.UUID, attempts int, lastError string) {
	t.Helper()
	tag, err := db.Exec(context.Background(), `
		UPDATE postbox.inbox SET status = 'dead', attempts = $3, last_error = $4, dead_at = now()
		WHERE subscriber = $1 AND message_id = $2 AND status = 'pending'`, sub, id, attempts, lastError)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("kill %s/%s: %v (%d rows)", sub, id, err, tag.RowsAffected())
	}
}

func ids(letters ...*letter) []uuid.UUID {
	out := make([]uuid.UUID, len(letters))
	for i, l := range letters {
		out[i] = l.id
	}
	return out
}

func TestListFilters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)

	a1 := &letter{sub: "inventory", typ: "order.created.v1", err: "timeout talking to stock", deadAt: at(1),
		attempts: 7, key: "order-1", headers: map[string]string{postbox.HeaderCorrelationID: "c-1", "x-retry-count": "7"}}
	a2 := &letter{sub: "inventory", typ: "order.created.v1", err: "disk 100% full", deadAt: at(2)}
	a3 := &letter{sub: "inventory", typ: "order.cancelled.v1", err: "disk 100 percent full", deadAt: at(3)}
	a4 := &letter{sub: "inventory", typ: "order.created.v1", err: `bad a_b field \ here`, deadAt: at(4)}
	a5 := &letter{sub: "inventory", typ: "order.created.v1", err: "bad axb field", deadAt: at(5)}
	b1 := &letter{sub: "billing", typ: "order.created.v1", err: "timeout", deadAt: at(0)}
	b2 := &letter{sub: "billing", typ: "invoice.v1", err: "disk 100% full", deadAt: at(6)}
	p1 := &letter{sub: "inventory", typ: "order.created.v1", err: "timeout", deadAt: at(1), pending: true}
	insert(t, pool, a1, a2, a3, a4, a5, b1, b2, p1)

	cases := []struct {
		name string
		f    dlq.Filter
		want []*letter
	}{
		{"everything", dlq.Filter{}, []*letter{b1, a1, a2, a3, a4, a5, b2}},
		{"subscriber", dlq.Filter{Subscriber: "inventory"}, []*letter{a1, a2, a3, a4, a5}},
		{"type over all subscribers", dlq.Filter{Type: "order.created.v1"}, []*letter{b1, a1, a2, a4, a5}},
		{"error with percent", dlq.Filter{ErrorContains: "100%"}, []*letter{a2, b2}},
		{"error with underscore", dlq.Filter{ErrorContains: "a_b"}, []*letter{a4}},
		{"error with backslash", dlq.Filter{ErrorContains: `\ here`}, []*letter{a4}},
		{"error, pending rows excluded", dlq.Filter{Subscriber: "inventory", ErrorContains: "timeout"}, []*letter{a1}},
		{"since until half open", dlq.Filter{Since: at(2), Until: at(4)}, []*letter{a2, a3}},
		{"since only", dlq.Filter{Subscriber: "billing", Since: at(1)}, []*letter{b2}},
		{"until only", dlq.Filter{Until: at(1)}, []*letter{b1}},
		{"since equals until", dlq.Filter{Subscriber: "inventory", Since: at(2), Until: at(2)}, nil},
		{"ids", dlq.Filter{IDs: ids(a3, b1, p1)}, []*letter{b1, a3}},
		{"ids of another subscriber", dlq.Filter{Subscriber: "billing", IDs: ids(a3, a4)}, nil},
		{"limit, oldest first", dlq.Filter{Limit: 3}, []*letter{b1, a1, a2}},
		{"everything combined", dlq.Filter{Subscriber: "inventory", Type: "order.created.v1",
			ErrorContains: "full", Since: at(1), Until: at(10), IDs: ids(a1, a2, a3), Limit: 10}, []*letter{a2}},
		{"nothing matches", dlq.Filter{Subscriber: "shipping"}, nil},
	}
	for _, c := range cases {
		got, err := dlq.List(ctx, pool, c.f)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var gotIDs []uuid.UUID
		for _, d := range got {
			gotIDs = append(gotIDs, d.MessageID)
		}
		if !slices.Equal(gotIDs, ids(c.want...)) {
			t.Errorf("%s: List = %v, want %v", c.name, gotIDs, ids(c.want...))
		}
		if c.f.Subscriber != "" {
			n, err := dlq.Count(ctx, pool, c.f)
			if err != nil {
				t.Fatalf("%s: count: %v", c.name, err)
			}
			if n != len(c.want) {
				t.Errorf("%s: Count = %d, want %d", c.name, n, len(c.want))
			}
		}
	}

	// Every field of a listed letter.
	got, err := dlq.List(ctx, pool, dlq.Filter{IDs: ids(a1)})
	if err != nil || len(got) != 1 {
		t.Fatalf("List a1 = %v, %v", got, err)
	}
	d := got[0]
	if d.Subscriber != "inventory" || d.MessageID != a1.id || d.Topic != "orders" || d.Type != "order.created.v1" ||
		d.Key != "order-1" || d.Attempts != 7 || d.ReplayCount != 0 || d.LastError != a1.err ||
		!d.DeadAt.Equal(at(1)) || !d.CreatedAt.Equal(at(1).Add(-time.Hour)) ||
		string(d.Payload) != fmt.Sprintf(`{"letter":%q}`, a1.id) ||
		d.Headers[postbox.HeaderCorrelationID] != "c-1" || d.Headers["x-retry-count"] != "7" || len(d.Headers) != 2 {
		t.Fatalf("List a1 = %+v", d)
	}
	// A letter without key and headers.
	got, err = dlq.List(ctx, pool, dlq.Filter{IDs: ids(a2)})
	if err != nil || len(got) != 1 || got[0].Key != "" || got[0].Headers != nil {
		t.Fatalf("List a2 = %+v, %v", got, err)
	}
}

func TestGet(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)

	a := &letter{sub: "inventory", typ: "order.created.v1", err: "boom", deadAt: at(1), attempts: 3, key: "k",
		headers: map[string]string{"n": "1"}}
	p := &letter{sub: "inventory", typ: "order.created.v1", err: "boom", deadAt: at(1), pending: true}
	insert(t, pool, a, p)
	// A header value that postbox would never write: kept as JSON text.
	if _, err := pool.Exec(ctx, `UPDATE postbox.inbox SET headers = headers || '{"odd": 5}' WHERE message_id = $1`, a.id); err != nil {
		t.Fatal(err)
	}

	d, err := dlq.Get(ctx, pool, "inventory", a.id)
	if err != nil {
		t.Fatal(err)
	}
	if d.MessageID != a.id || d.Subscriber != "inventory" || d.Attempts != 3 || d.LastError != "boom" ||
		d.Key != "k" || d.Headers["n"] != "1" || d.Headers["odd"] != "5" || !d.DeadAt.Equal(at(1)) {
		t.Fatalf("Get = %+v", d)
	}

	for name, c := range map[string]struct {
		sub string
		id  uuid.UUID
	}{
		"unknown id":          {"inventory", postbox.NewID()},
		"other subscriber":    {"billing", a.id},
		"pending, not a dead": {"inventory", p.id},
	} {
		_, err := dlq.Get(ctx, pool, c.sub, c.id)
		if !errors.Is(err, dlq.ErrNotFound) {
			t.Errorf("%s: Get err = %v, want ErrNotFound", name, err)
		}
	}
	if _, err := dlq.Get(ctx, pool, "Not A Name", a.id); !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("Get with a bad subscriber: err = %v, want ErrInvalid", err)
	}

	if _, err := dlq.Replay(ctx, pool, dlq.Filter{Subscriber: "inventory", IDs: ids(a)}); err != nil {
		t.Fatal(err)
	}
	if _, err := dlq.Get(ctx, pool, "inventory", a.id); !errors.Is(err, dlq.ErrNotFound) {
		t.Errorf("Get after replay: err = %v, want ErrNotFound", err)
	}
}

func TestReplay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)

	t1 := &letter{sub: "inventory", typ: "order.created.v1", err: "timeout (1)", deadAt: at(1)}
	t2 := &letter{sub: "inventory", typ: "order.created.v1", err: "timeout (2)", deadAt: at(2)}
	t3 := &letter{sub: "inventory", typ: "order.cancelled.v1", err: "timeout (3)", deadAt: at(3)}
	x1 := &letter{sub: "inventory", typ: "order.created.v1", err: "bad payload", deadAt: at(4)}
	x2 := &letter{sub: "inventory", typ: "order.created.v1", err: "bad payload", deadAt: at(5)}
	x3 := &letter{sub: "inventory", typ: "order.created.v1", err: "bad payload", deadAt: at(6)}
	b1 := &letter{sub: "billing", typ: "order.created.v1", err: "timeout (b)", deadAt: at(1)}
	insert(t, pool, t1, t2, t3, x1, x2, x3, b1)

	// By filter: Count says what Replay then does.
	byFilter := dlq.Filter{Subscriber: "inventory", Type: "order.created.v1", ErrorContains: "timeout"}
	n, err := dlq.Count(ctx, pool, byFilter)
	if err != nil || n != 2 {
		t.Fatalf("Count = %d, %v; want 2", n, err)
	}
	if n, err := dlq.Replay(ctx, pool, byFilter); err != nil || n != 2 {
		t.Fatalf("Replay by filter = %d, %v; want 2", n, err)
	}
	checkReplayed(t, pool, "inventory", t1.id, 1)
	checkReplayed(t, pool, "inventory", t2.id, 1)
	for _, l := range []*letter{t3, x1, x2, x3, b1} {
		checkDead(t, pool, l)
	}
	for _, l := range []*letter{t1, t2} {
		log := replayLog(t, pool, "inventory", l.id)
		if len(log) != 1 || log[0].attempts != 10 || log[0].lastError == nil || *log[0].lastError != l.err {
			t.Fatalf("replays of %s = %+v, want one row with attempts 10 and error %q", l.id, log, l.err)
		}
	}
	if n, err := dlq.Count(ctx, pool, byFilter); err != nil || n != 0 {
		t.Fatalf("Count after replay = %d, %v; want 0", n, err)
	}

	// By IDs: an ID of another subscriber's letter and of an already replayed
	// one select nothing.
	byIDs := dlq.Filter{Subscriber: "inventory", IDs: ids(x1, x3, b1, t1)}
	if n, err := dlq.Count(ctx, pool, byIDs); err != nil || n != 2 {
		t.Fatalf("Count by IDs = %d, %v; want 2", n, err)
	}
	if n, err := dlq.Replay(ctx, pool, byIDs); err != nil || n != 2 {
		t.Fatalf("Replay by IDs = %d, %v; want 2", n, err)
	}
	checkReplayed(t, pool, "inventory", x1.id, 1)
	checkReplayed(t, pool, "inventory", x3.id, 1)
	checkReplayed(t, pool, "inventory", t1.id, 1) // not replayed twice
	for _, l := range []*letter{t3, x2, b1} {
		checkDead(t, pool, l)
	}
	if got := scalar(t, pool, `SELECT count(*) FROM postbox.replays`); got != 4 {
		t.Fatalf("postbox.replays has %d rows, want 4", got)
	}

	// Dead again, replayed again: x-replay-count "2", a second log row with
	// the new attempts and error.
	kill(t, pool, "inventory", x1.id, 4, "still bad")
	if n, err := dlq.Replay(ctx, pool, dlq.Filter{Subscriber: "inventory", IDs: ids(x1)}); err != nil || n != 1 {
		t.Fatalf("second Replay = %d, %v; want 1", n, err)
	}
	checkReplayed(t, pool, "inventory", x1.id, 2)
	log := replayLog(t, pool, "inventory", x1.id)
	if len(log) != 2 || log[1].attempts != 4 || *log[1].lastError != "still bad" {
		t.Fatalf("replays of x1 = %+v, want a second row with attempts 4 and error %q", log, "still bad")
	}

	// Through a transaction: a rolled back replay leaves the letter dead.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := dlq.Replay(ctx, tx, dlq.Filter{Subscriber: "billing"}); err != nil || n != 1 {
		t.Fatalf("Replay in tx = %d, %v; want 1", n, err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	checkDead(t, pool, b1)
}

func TestReplayLimitOldestFirst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)

	var letters []*letter
	for i := 5; i > 0; i-- { // inserted newest first, so seq order is not dead_at order
		letters = append(letters, &letter{sub: "inventory", typ: "t", err: "e", deadAt: at(i)})
	}
	insert(t, pool, letters...)
	oldest, rest := letters[3:], letters[:3]

	f := dlq.Filter{Subscriber: "inventory", Limit: 2}
	if n, err := dlq.Count(ctx, pool, f); err != nil || n != 2 {
		t.Fatalf("Count with limit 2 = %d, %v", n, err)
	}
	if n, err := dlq.Replay(ctx, pool, f); err != nil || n != 2 {
		t.Fatalf("Replay with limit 2 = %d, %v", n, err)
	}
	for _, l := range oldest {
		checkReplayed(t, pool, l.sub, l.id, 1)
	}
	for _, l := range rest {
		checkDead(t, pool, l)
	}
	// Calling again goes through the rest.
	if n, err := dlq.Replay(ctx, pool, f); err != nil || n != 2 {
		t.Fatalf("second Replay = %d, %v", n, err)
	}
	if n, err := dlq.Replay(ctx, pool, f); err != nil || n != 1 {
		t.Fatalf("third Replay = %d, %v", n, err)
	}
	if n, err := dlq.Replay(ctx, pool, f); err != nil || n != 0 {
		t.Fatalf("fourth Replay = %d, %v", n, err)
	}
}

func TestSQLFunctions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)

	i1 := &letter{sub: "inventory", typ: "a", err: "timeout", deadAt: at(1)}
	i2 := &letter{sub: "inventory", typ: "b", err: "bad", deadAt: at(2)}
	i3 := &letter{sub: "inventory", typ: "a", err: "bad", deadAt: at(3)}
	b1 := &letter{sub: "billing", typ: "a", err: "timeout", deadAt: at(1)}
	b2 := &letter{sub: "billing", typ: "b", err: "bad", deadAt: at(2)}
	b3 := &letter{sub: "billing", typ: "b", err: "bad", deadAt: at(3)}
	insert(t, pool, i1, i2, i3, b1, b2, b3)

	// The one-argument call that operators type replays every dead letter
	// of the subscriber, like dlq.Replay.
	if n := scalar(t, pool, `SELECT postbox.replay_dead_letters('inventory')`); n != 3 {
		t.Fatalf("replay_dead_letters('inventory') = %d, want 3", n)
	}
	for _, l := range []*letter{i1, i2, i3} {
		checkReplayed(t, pool, l.sub, l.id, 1)
		if log := replayLog(t, pool, l.sub, l.id); len(log) != 1 {
			t.Fatalf("replays of %s: %d rows, want 1", l.id, len(log))
		}
	}
	for _, l := range []*letter{b1, b2, b3} {
		checkDead(t, pool, l)
	}

	// A second cycle through SQL, by message ID.
	kill(t, pool, "inventory", i2.id, 2, "bad again")
	if n := scalar(t, pool, `SELECT postbox.replay_dead_letters('inventory', ARRAY[$1::uuid])`, i2.id); n != 1 {
		t.Fatalf("replay_dead_letters by ID = %d, want 1", n)
	}
	checkReplayed(t, pool, "inventory", i2.id, 2)
	if log := replayLog(t, pool, "inventory", i2.id); len(log) != 2 {
		t.Fatalf("replays of i2: %d rows, want 2", len(log))
	}

	// Named arguments take the rest of the filter; the Go Count agrees.
	if n, err := dlq.Count(ctx, pool, dlq.Filter{Subscriber: "billing", Type: "b", Since: at(3)}); err != nil || n != 1 {
		t.Fatalf("Count = %d, %v; want 1", n, err)
	}
	if n := scalar(t, pool, `SELECT postbox.purge_dead_letters('billing', type_name => 'b', dead_since => $1)`, at(3)); n != 1 {
		t.Fatalf("purge_dead_letters(type_name, dead_since) = %d, want 1", n)
	}
	if _, ok := get(t, pool, "billing", b3.id); ok {
		t.Fatal("b3 still there after purge")
	}
	if n := scalar(t, pool, `SELECT postbox.purge_dead_letters('billing', error_like => 'time%')`); n != 1 {
		t.Fatalf("purge_dead_letters(error_like) = %d, want 1", n)
	}
	if n := scalar(t, pool, `SELECT postbox.purge_dead_letters('billing')`); n != 1 {
		t.Fatalf("purge_dead_letters('billing') = %d, want 1", n)
	}
	if n := scalar(t, pool, `SELECT count(*) FROM postbox.dead_letters`); n != 0 {
		t.Fatalf("%d dead letters left, want 0", n)
	}
	// Purging never touches pending rows, not even replayed ones.
	if n := scalar(t, pool, `SELECT postbox.purge_dead_letters('inventory')`); n != 0 {
		t.Fatalf("purge_dead_letters('inventory') = %d, want 0", n)
	}
	if n := scalar(t, pool, `SELECT count(*) FROM postbox.inbox WHERE subscriber = 'inventory' AND status = 'pending'`); n != 3 {
		t.Fatalf("%d pending inventory rows, want 3", n)
	}
}

func TestPurge(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)

	a := &letter{sub: "inventory", typ: "order.created.v1", err: "100% broken", deadAt: at(1)}
	b := &letter{sub: "inventory", typ: "order.created.v1", err: "1000 broken", deadAt: at(2)}
	c := &letter{sub: "inventory", typ: "order.created.v1", err: "100% broken", deadAt: at(3)}
	d := &letter{sub: "inventory", typ: "order.cancelled.v1", err: "100% broken", deadAt: at(4)}
	e := &letter{sub: "billing", typ: "order.created.v1", err: "100% broken", deadAt: at(1)}
	p := &letter{sub: "inventory", typ: "order.created.v1", err: "100% broken", deadAt: at(1), pending: true}
	insert(t, pool, a, b, c, d, e, p)

	f := dlq.Filter{Subscriber: "inventory", Type: "order.created.v1", ErrorContains: "100%", Until: at(3)}
	if n, err := dlq.Count(ctx, pool, f); err != nil || n != 1 {
		t.Fatalf("Count = %d, %v; want 1", n, err)
	}
	if n, err := dlq.Purge(ctx, pool, f); err != nil || n != 1 {
		t.Fatalf("Purge = %d, %v; want 1", n, err)
	}
	if _, ok := get(t, pool, a.sub, a.id); ok {
		t.Fatal("a still there after purge")
	}
	for _, l := range []*letter{b, c, d, e} {
		checkDead(t, pool, l)
	}
	if r, ok := get(t, pool, p.sub, p.id); !ok || r.status != "pending" {
		t.Fatalf("pending row after purge: %+v, %v", r, ok)
	}

	byIDs := dlq.Filter{Subscriber: "inventory", IDs: ids(c, e, p)}
	if n, err := dlq.Count(ctx, pool, byIDs); err != nil || n != 1 {
		t.Fatalf("Count by IDs = %d, %v; want 1", n, err)
	}
	if n, err := dlq.Purge(ctx, pool, byIDs); err != nil || n != 1 {
		t.Fatalf("Purge by IDs = %d, %v; want 1", n, err)
	}
	if _, ok := get(t, pool, c.sub, c.id); ok {
		t.Fatal("c still there after purge")
	}
	for _, l := range []*letter{b, d, e} {
		checkDead(t, pool, l)
	}
	if n := scalar(t, pool, `SELECT count(*) FROM postbox.replays`); n != 0 {
		t.Fatalf("purge wrote %d replay records", n)
	}
}

// spy passes calls through to a real database and counts them, to show
// that invalid input never reaches it.
type spy struct {
	db    postbox.DBTX
	calls atomic.Int32
}

func (s *spy) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	s.calls.Add(1)
	return s.db.Exec(ctx, sql, args...)
}

func (s *spy) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	s.calls.Add(1)
	return s.db.Query(ctx, sql, args...)
}

func (s *spy) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	s.calls.Add(1)
	return s.db.QueryRow(ctx, sql, args...)
}

func (s *spy) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	s.calls.Add(1)
	return s.db.CopyFrom(ctx, table, columns, src)
}

func TestInvalidFilters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	insert(t, pool,
		&letter{sub: "inventory", typ: "t", err: "e", deadAt: at(1)},
		&letter{sub: "billing", typ: "t", err: "e", deadAt: at(2)})
	db := &spy{db: pool}

	cases := []struct {
		name      string
		f         dlq.Filter
		listOK    bool // List accepts it (List allows an empty subscriber)
		wantField string
	}{
		{"no subscriber", dlq.Filter{}, true, "subscriber"},
		{"no subscriber, with a filter", dlq.Filter{ErrorContains: "e"}, true, "subscriber"},
		{"subscriber not a name", dlq.Filter{Subscriber: "Inventory"}, false, "subscriber"},
		{"subscriber with SQL", dlq.Filter{Subscriber: "x'; DELETE FROM postbox.inbox; --"}, false, "subscriber"},
		{"negative limit", dlq.Filter{Subscriber: "inventory", Limit: -1}, false, "limit"},
		{"limit too high", dlq.Filter{Subscriber: "inventory", Limit: dlq.MaxLimit + 1}, false, "limit"},
		{"since after until", dlq.Filter{Subscriber: "inventory", Since: at(2), Until: at(1)}, false, "since"},
		{"type with NUL", dlq.Filter{Subscriber: "inventory", Type: "a\x00b"}, false, "type"},
		{"error not UTF-8", dlq.Filter{Subscriber: "inventory", ErrorContains: "\xff"}, false, "error_contains"},
		{"error too long", dlq.Filter{Subscriber: "inventory", ErrorContains: strings.Repeat("e", 1025)}, false, "error_contains"},
	}
	for _, c := range cases {
		calls := map[string]func() error{
			"Replay": func() error { _, err := dlq.Replay(ctx, db, c.f); return err },
			"Purge":  func() error { _, err := dlq.Purge(ctx, db, c.f); return err },
			"Count":  func() error { _, err := dlq.Count(ctx, db, c.f); return err },
		}
		if !c.listOK {
			calls["List"] = func() error { _, err := dlq.List(ctx, db, c.f); return err }
		}
		for fn, call := range calls {
			err := call()
			var verr *postbox.ValidationError
			if !errors.Is(err, postbox.ErrInvalid) || !errors.As(err, &verr) || verr.Field != c.wantField {
				t.Errorf("%s: %s err = %v, want ErrInvalid on field %q", c.name, fn, err, c.wantField)
			}
		}
	}
	if n := db.calls.Load(); n != 0 {
		t.Fatalf("invalid filters reached the database %d times", n)
	}
	if n := scalar(t, pool, `SELECT count(*) FROM postbox.dead_letters`); n != 2 {
		t.Fatalf("%d dead letters left, want 2", n)
	}
	if n := scalar(t, pool, `SELECT count(*) FROM postbox.replays`); n != 0 {
		t.Fatalf("%d replay records, want 0", n)
	}

	// The edges that are valid.
	if got, err := dlq.List(ctx, db, dlq.Filter{Limit: dlq.MaxLimit}); err != nil || len(got) != 2 {
		t.Fatalf("List with the max limit = %d letters, %v", len(got), err)
	}
	if n, err := dlq.Replay(ctx, db, dlq.Filter{Subscriber: "inventory", Since: at(1), Until: at(1)}); err != nil || n != 0 {
		t.Fatalf("Replay of an empty time range = %d, %v", n, err)
	}
	// A name that is valid but unknown replays nothing.
	if n, err := dlq.Replay(ctx, db, dlq.Filter{Subscriber: "nobody"}); err != nil || n != 0 {
		t.Fatalf("Replay of an unknown subscriber = %d, %v", n, err)
	}
}

// TestConcurrentReplays: replays racing over the same letters replay each
// letter once.
func TestConcurrentReplays(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	const letters = 300
	if _, err := pool.Exec(ctx, `
		INSERT INTO postbox.inbox (subscriber, message_id, partition, status, topic, payload,
		                           created_at, attempts, last_error, dead_at)
		SELECT 'inventory', gen_random_uuid(), 0, 'dead', 'orders', '\x00', now(), 10, 'e',
		       now() - g * interval '1 second'
		FROM generate_series(1, $1) g`, letters); err != nil {
		t.Fatal(err)
	}

	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			for {
				n, err := dlq.Replay(ctx, pool, dlq.Filter{Subscriber: "inventory", Limit: 40})
				if err != nil {
					errs <- err
					return
				}
				if n == 0 {
					return
				}
				total.Add(int64(n))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if total.Load() != letters {
		t.Fatalf("replays reported %d letters, want %d", total.Load(), letters)
	}
	if n := scalar(t, pool, `SELECT count(*) FROM postbox.replays`); n != letters {
		t.Fatalf("%d replay records, want %d", n, letters)
	}
	if n := scalar(t, pool, `SELECT count(DISTINCT message_id) FROM postbox.replays`); n != letters {
		t.Fatalf("%d distinct replayed messages, want %d", n, letters)
	}
	if n := scalar(t, pool, `SELECT count(*) FROM postbox.inbox WHERE status = 'pending' AND replay_count = 1`); n != letters {
		t.Fatalf("%d letters pending with replay_count 1, want %d", n, letters)
	}
}

// TestNoRouteReplay: a send to a queue nobody declared dies with
// "no-route"; once the queue is declared, replaying it makes a delivery the
// queue's consumers can claim.
func TestNoRouteReplay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)

	var sent []uuid.UUID
	for i := range 3 {
		msg := &postbox.Message{Topic: "shipping", Type: "ship.v1", Key: fmt.Sprintf("order-%d", i%2),
			Payload: []byte(`{}`), Headers: map[string]string{postbox.HeaderCorrelationID: fmt.Sprint(i)}}
		if err := outbox.Send(ctx, pool, msg); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, msg.ID)
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}

	letters, err := dlq.List(ctx, pool, dlq.Filter{Subscriber: "shipping", ErrorContains: "no-route"})
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 3 {
		t.Fatalf("List = %d letters, want 3", len(letters))
	}
	for _, d := range letters {
		if !slices.Contains(sent, d.MessageID) || d.LastError != "no-route" || d.Type != "ship.v1" ||
			d.Topic != "shipping" || d.Headers[postbox.HeaderOriginalError] != "no-route" || d.DeadAt.IsZero() {
			t.Fatalf("no-route letter = %+v", d)
		}
	}

	if err := dispatcher.DeclareQueue(ctx, pool, "shipping", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	if n, err := dlq.Replay(ctx, pool, dlq.Filter{Subscriber: "shipping", ErrorContains: "no-route"}); err != nil || n != 3 {
		t.Fatalf("Replay = %d, %v; want 3", n, err)
	}
	for _, id := range sent {
		checkReplayed(t, pool, "shipping", id, 1)
	}
	// The queue now has three ready deliveries and no dead letters.
	var ready, dead int
	if err := pool.QueryRow(ctx, `SELECT ready, dead FROM postbox.queue_depths WHERE subscriber = 'shipping'`).
		Scan(&ready, &dead); err != nil {
		t.Fatal(err)
	}
	if ready != 3 || dead != 0 {
		t.Fatalf("queue_depths: ready %d, dead %d; want 3 and 0", ready, dead)
	}
	// Claimable as the inbox claims: pending, available, and first of its
	// key: order-0 (two messages) and order-1 give two now, in send order.
	rows, err := pool.Query(ctx, `
		SELECT i.message_id FROM postbox.inbox i
		WHERE i.subscriber = 'shipping' AND i.status = 'pending' AND i.available_at <= now()
		  AND (i.key IS NULL OR NOT EXISTS (
		        SELECT 1 FROM postbox.inbox e
		        WHERE e.subscriber = i.subscriber AND e.status = 'pending' AND e.key = i.key AND e.seq < i.seq))
		ORDER BY i.seq
		FOR UPDATE OF i SKIP LOCKED`)
	if err != nil {
		t.Fatal(err)
	}
	claimable, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(claimable, sent[:2]) {
		t.Fatalf("claimable = %v, want the first two sends %v", claimable, sent[:2])
	}
}
