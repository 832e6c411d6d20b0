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
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// base is when the fixtures' letters died, give or take some minutes.
var base = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func at(minutes int) time.Time { return base.Add(time.Duration(minutes) * time.Minute) }

// letter is a fixture: a dead letter written straight into
// postbox.dead_letters, or (pending) a delivery parked for a retry, which no
// dlq call may ever touch. Fixtures get their seq in insertion order, so
// the order of insert is the letters' original order.
type letter struct {
	sub      string
	typ      string
	err      string
	deadAt   time.Time
	attempts int
	key      string
	headers  map[string]string
	pending  bool // a delivery in backoff (postbox.parked), not a dead letter
	id       uuid.UUID
}

// fixtureAttempts is the attempts of a fixture that does not set them.
const fixtureAttempts = 10

// insert writes the letters and fills in their IDs.
func insert(t *testing.T, pool *pgxpool.Pool, letters ...*letter) {
	t.Helper()
	ctx := context.Background()
	for _, l := range letters {
		l.id = postbox.NewID()
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
		if l.attempts == 0 {
			l.attempts = fixtureAttempts
		}
		// key_hash as outbox.Publish computes it, part as the relay does.
		sql := `
			INSERT INTO postbox.dead_letters (subscriber, message_id, part, seq, key_hash, attempts, topic, type, key,
			                                  payload, headers, created_at, enqueued_at, last_error, last_error_at, dead_at)
			SELECT $1, $2, (h.kh % 16)::smallint, nextval('postbox.inbox_seq'), h.kh, $3, 'orders', $4, $5,
			       $6, $7::jsonb, $8, $8, $9, $10, $10
			FROM (SELECT postbox.key_hash(coalesce(convert_to($5::text, 'UTF8'), uuid_send($2::uuid))) AS kh) h`
		if l.pending {
			sql = `
			INSERT INTO postbox.parked (subscriber, message_id, part, seq, key_hash, attempts, reason, topic, type, key,
			                            payload, headers, created_at, enqueued_at, last_error, last_error_at, available_at)
			SELECT $1, $2, (h.kh % 16)::smallint, nextval('postbox.inbox_seq'), h.kh, $3, 'retry', 'orders', $4, $5,
			       $6, $7::jsonb, $8, $8, $9, $10, now() + interval '1 hour'
			FROM (SELECT postbox.key_hash(coalesce(convert_to($5::text, 'UTF8'), uuid_send($2::uuid))) AS kh) h`
		}
		_, err := pool.Exec(ctx, sql, l.sub, l.id, l.attempts, l.typ, key, []byte(fmt.Sprintf(`{"letter":%q}`, l.id)),
			headers, l.deadAt.Add(-time.Hour), l.err, l.deadAt)
		if err != nil {
			t.Fatalf("insert fixture: %v", err)
		}
	}
}

// row is where a delivery is, as the tests read it back: a dead letter
// ("dead") or parked ("parked", with its reason).
type row struct {
	state       string
	reason      string
	seq         int64
	attempts    int
	replayCount int
	headers     map[string]string
	lastError   *string
	deadAt      *time.Time
	available   bool // due now (available_at <= now())
}

// get reads a delivery from postbox.dead_letters or postbox.parked; ok is
// false when it is in neither.
func get(t *testing.T, db postbox.DBTX, sub string, id uuid.UUID) (r row, ok bool) {
	t.Helper()
	rows, err := db.Query(context.Background(), `
		SELECT 'dead', '', seq, attempts, replay_count, headers, last_error, dead_at, true
		FROM postbox.dead_letters WHERE subscriber = $1 AND message_id = $2
		UNION ALL
		SELECT 'parked', reason, seq, attempts, replay_count, headers, last_error, NULL, available_at <= now()
		FROM postbox.parked WHERE subscriber = $1 AND message_id = $2`, sub, id)
	if err != nil {
		t.Fatal(err)
	}
	found, err := pgx.CollectRows(rows, func(cr pgx.CollectableRow) (row, error) {
		var r row
		var headers []byte
		if err := cr.Scan(&r.state, &r.reason, &r.seq, &r.attempts, &r.replayCount, &headers, &r.lastError, &r.deadAt, &r.available); err != nil {
			return r, err
		}
		if headers != nil {
			if err := json.Unmarshal(headers, &r.headers); err != nil {
				return r, err
			}
		}
		return r, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	switch len(found) {
	case 0:
		return row{}, false
	case 1:
		return found[0], true
	}
	t.Fatalf("%s/%s is both a dead letter and parked: %+v", sub, id, found)
	return row{}, false
}

// checkReplayed asserts that a letter is parked for handling after its n-th
// replay: attempts reset, replay count n, the replay headers set, no longer
// a dead letter; due now, unless it waits behind an earlier delivery of its
// key (due false).
func checkReplayed(t *testing.T, db postbox.DBTX, sub string, id uuid.UUID, n int, due bool) {
	t.Helper()
	r, ok := get(t, db, sub, id)
	if !ok {
		t.Fatalf("%s/%s: gone, want replayed", sub, id)
	}
	if r.state != "parked" || r.attempts != 0 || r.replayCount != n || r.available != due {
		t.Fatalf("%s/%s after replay %d: %+v, want parked, attempts 0, replay_count %d, due now %v",
			sub, id, n, r, n, due)
	}
	// A delivery waiting behind its key may also have been marked blocked.
	if r.reason != "replayed" && (due || r.reason != "blocked") {
		t.Fatalf("%s/%s after replay %d: reason %q, want replayed", sub, id, n, r.reason)
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
	if _, err := dlq.Get(context.Background(), db, sub, id); !errors.Is(err, dlq.ErrNotFound) {
		t.Fatalf("%s/%s: dlq.Get after replay: err = %v, want ErrNotFound", sub, id, err)
	}
}

// checkDead asserts that a letter is still dead and untouched.
func checkDead(t *testing.T, db postbox.DBTX, l *letter) {
	t.Helper()
	r, ok := get(t, db, l.sub, l.id)
	if !ok {
		t.Fatalf("%s/%s (%q): gone, want still dead", l.sub, l.id, l.err)
	}
	if r.state != "dead" || r.replayCount != 0 || r.attempts != l.attempts || r.deadAt == nil || !r.deadAt.Equal(l.deadAt) {
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

func scalar(t *testing.T, db pgtest.Querier, sql string, args ...any) int {
	t.Helper()
	return pgtest.Count(t, context.Background(), db, sql, args...)
}

// kill makes a replayed letter dead again with new attempts and error, as
// a consumer does when the letter fails again: the parked delivery moves to
// the dead letters with its seq and replay count.
func kill(t *testing.T, db postbox.DBTX, sub string, id uuid.UUID, attempts int, lastError string) {
	t.Helper()
	tag, err := db.Exec(context.Background(), `
		WITH k AS (DELETE FROM postbox.parked WHERE subscriber = $1 AND message_id = $2 RETURNING *)
		INSERT INTO postbox.dead_letters (subscriber, message_id, part, seq, key_hash, attempts, replay_count, topic,
		                                  type, key, payload, headers, created_at, enqueued_at, last_error,
		                                  last_error_at, dead_at)
		SELECT k.subscriber, k.message_id, k.part, k.seq, k.key_hash, $3, k.replay_count, k.topic, k.type, k.key,
		       k.payload, postbox.dead_letter_headers(k.headers, $3, $4), k.created_at, k.enqueued_at, $4, now(), now()
		FROM k`, sub, id, attempts, lastError)
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
		t.Run(c.name, func(t *testing.T) {
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
				// No letter here waits behind an earlier dead letter of its
				// key, so a replay and a purge would both take what List shows.
				for name, count := range map[string]func(context.Context, postbox.DBTX, dlq.Filter) (int, error){
					"Count": dlq.Count, "CountPurge": dlq.CountPurge,
				} {
					n, err := count(ctx, pool, c.f)
					if err != nil {
						t.Fatalf("%s: %s: %v", c.name, name, err)
					}
					if n != len(c.want) {
						t.Errorf("%s: %s = %d, want %d", c.name, name, n, len(c.want))
					}
				}
			}
		})
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
	if _, err := pool.Exec(ctx, `UPDATE postbox.dead_letters SET headers = headers || '{"odd": 5}' WHERE message_id = $1`, a.id); err != nil {
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
		t.Run(name, func(t *testing.T) {
			_, err := dlq.Get(ctx, pool, c.sub, c.id)
			if !errors.Is(err, dlq.ErrNotFound) {
				t.Errorf("%s: Get err = %v, want ErrNotFound", name, err)
			}
		})
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
	checkReplayed(t, pool, "inventory", t1.id, 1, true)
	checkReplayed(t, pool, "inventory", t2.id, 1, true)
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
	checkReplayed(t, pool, "inventory", x1.id, 1, true)
	checkReplayed(t, pool, "inventory", x3.id, 1, true)
	checkReplayed(t, pool, "inventory", t1.id, 1, true) // not replayed twice
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
	checkReplayed(t, pool, "inventory", x1.id, 2, true)
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

// A Limit takes letters in their original order in Replay (so a key's
// messages are replayed in the order they were published) and oldest dead
// first in List and Purge.
func TestLimitOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// Inserted newest dead first, so original (seq) order is the reverse
	// of dead_at order: letters[0] died last.
	fixtures := func(t *testing.T) (*pgxpool.Pool, []*letter) {
		pool := pgtest.Pool(t, 4)
		var letters []*letter
		for i := 5; i > 0; i-- {
			letters = append(letters, &letter{sub: "inventory", typ: "t", err: "e", deadAt: at(i)})
		}
		insert(t, pool, letters...)
		return pool, letters
	}
	f := dlq.Filter{Subscriber: "inventory", Limit: 2}

	t.Run("replay takes original order", func(t *testing.T) {
		t.Parallel()
		pool, letters := fixtures(t)
		first, rest := letters[:2], letters[2:]
		if n, err := dlq.Count(ctx, pool, f); err != nil || n != 2 {
			t.Fatalf("Count with limit 2 = %d, %v", n, err)
		}
		if n, err := dlq.Replay(ctx, pool, f); err != nil || n != 2 {
			t.Fatalf("Replay with limit 2 = %d, %v", n, err)
		}
		for _, l := range first {
			checkReplayed(t, pool, l.sub, l.id, 1, true)
		}
		for _, l := range rest {
			checkDead(t, pool, l)
		}
		// Calling again goes through the rest.
		for i, want := range []int{2, 1, 0} {
			if n, err := dlq.Replay(ctx, pool, f); err != nil || n != want {
				t.Fatalf("Replay %d = %d, %v; want %d", i+2, n, err, want)
			}
		}
		if n := scalar(t, pool, `SELECT count(*) FROM postbox.dead_letters`); n != 0 {
			t.Fatalf("%d dead letters left after replaying all", n)
		}
	})

	t.Run("list and purge take oldest dead first", func(t *testing.T) {
		t.Parallel()
		pool, letters := fixtures(t)
		oldest, rest := letters[3:], letters[:3]
		got, err := dlq.List(ctx, pool, f)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].MessageID != letters[4].id || got[1].MessageID != letters[3].id {
			t.Fatalf("List with limit 2 = %+v, want the two oldest dead, oldest first", got)
		}
		if n, err := dlq.CountPurge(ctx, pool, f); err != nil || n != 2 {
			t.Fatalf("CountPurge with limit 2 = %d, %v", n, err)
		}
		if n, err := dlq.Purge(ctx, pool, f); err != nil || n != 2 {
			t.Fatalf("Purge with limit 2 = %d, %v", n, err)
		}
		for _, l := range oldest {
			if _, ok := get(t, pool, l.sub, l.id); ok {
				t.Fatalf("%s (dead at %s) still there after purging the two oldest", l.id, l.deadAt)
			}
		}
		for _, l := range rest {
			checkDead(t, pool, l)
		}
	})
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
		checkReplayed(t, pool, l.sub, l.id, 1, true)
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
	checkReplayed(t, pool, "inventory", i2.id, 2, true)
	if log := replayLog(t, pool, "inventory", i2.id); len(log) != 2 {
		t.Fatalf("replays of i2: %d rows, want 2", len(log))
	}

	// Named arguments take the rest of the filter; the Go Count agrees.
	if n, err := dlq.CountPurge(ctx, pool, dlq.Filter{Subscriber: "billing", Type: "b", Since: at(3)}); err != nil || n != 1 {
		t.Fatalf("CountPurge = %d, %v; want 1", n, err)
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
	if d := pgtest.Depths(t, ctx, pool, "inventory"); d != (pgtest.Depth{Ready: 3}) {
		t.Fatalf("inventory depths %+v, want the 3 replayed letters ready", d)
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
	if n, err := dlq.CountPurge(ctx, pool, f); err != nil || n != 1 {
		t.Fatalf("CountPurge = %d, %v; want 1", n, err)
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
	if r, ok := get(t, pool, p.sub, p.id); !ok || r.state != "parked" || r.reason != "retry" {
		t.Fatalf("pending row after purge: %+v, %v", r, ok)
	}

	byIDs := dlq.Filter{Subscriber: "inventory", IDs: ids(c, e, p)}
	if n, err := dlq.CountPurge(ctx, pool, byIDs); err != nil || n != 1 {
		t.Fatalf("CountPurge by IDs = %d, %v; want 1", n, err)
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
		{"no subscriber", dlq.Filter{}, true, "Filter.Subscriber"},
		{"no subscriber, with a filter", dlq.Filter{ErrorContains: "e"}, true, "Filter.Subscriber"},
		{"subscriber not a name", dlq.Filter{Subscriber: "Inventory"}, false, "Filter.Subscriber"},
		{"subscriber with SQL", dlq.Filter{Subscriber: "x'; DELETE FROM postbox.dead_letters; --"}, false, "Filter.Subscriber"},
		{"reserved-looking name that is not dlq.Relay", dlq.Filter{Subscriber: "_outbox"}, false, "Filter.Subscriber"},
		{"negative limit", dlq.Filter{Subscriber: "inventory", Limit: -1}, false, "Filter.Limit"},
		{"limit too high", dlq.Filter{Subscriber: "inventory", Limit: dlq.MaxLimit + 1}, false, "Filter.Limit"},
		{"since after until", dlq.Filter{Subscriber: "inventory", Since: at(2), Until: at(1)}, false, "Filter.Since"},
		{"type with NUL", dlq.Filter{Subscriber: "inventory", Type: "a\x00b"}, false, "Filter.Type"},
		{"error not UTF-8", dlq.Filter{Subscriber: "inventory", ErrorContains: "\xff"}, false, "Filter.ErrorContains"},
		{"error too long", dlq.Filter{Subscriber: "inventory", ErrorContains: strings.Repeat("e", 1025)}, false, "Filter.ErrorContains"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			calls := map[string]func() error{
				"Replay": func() error { _, err := dlq.Replay(ctx, db, c.f); return err },
				"Purge":  func() error { _, err := dlq.Purge(ctx, db, c.f); return err },
				"Count":  func() error { _, err := dlq.Count(ctx, db, c.f); return err },
				"CountPurge": func() error {
					_, err := dlq.CountPurge(ctx, db, c.f)
					return err
				},
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
		})
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
	// A name that is valid but unknown replays nothing; so does the
	// relay's quarantine when it is empty.
	for _, sub := range []string{"nobody", dlq.Relay} {
		if n, err := dlq.Replay(ctx, db, dlq.Filter{Subscriber: sub}); err != nil || n != 0 {
			t.Fatalf("Replay of %s = %d, %v; want 0", sub, n, err)
		}
		if n, err := dlq.CountPurge(ctx, db, dlq.Filter{Subscriber: sub}); err != nil || n != 0 {
			t.Fatalf("CountPurge of %s = %d, %v; want 0", sub, n, err)
		}
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
		INSERT INTO postbox.dead_letters (subscriber, message_id, part, seq, key_hash, topic, payload,
		                                  created_at, attempts, last_error, dead_at)
		SELECT 'inventory', x.id, (h.kh % 16)::smallint, nextval('postbox.inbox_seq'), h.kh, 'orders', '\x00',
		       now(), 10, 'e', now() - x.g * interval '1 second'
		FROM (SELECT g, gen_random_uuid() AS id FROM generate_series(1, $1) g) x
		CROSS JOIN LATERAL (SELECT postbox.key_hash(uuid_send(x.id)) AS kh) h`, letters); err != nil {
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
	if n := scalar(t, pool, `SELECT count(*) FROM postbox.parked WHERE reason = 'replayed' AND replay_count = 1`); n != letters {
		t.Fatalf("%d letters pending with replay_count 1, want %d", n, letters)
	}
	if d := pgtest.Depths(t, ctx, pool, "inventory"); d != (pgtest.Depth{Ready: letters}) {
		t.Fatalf("inventory depths %+v, want every letter ready once", d)
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
	if n, err := dlq.Count(ctx, pool, dlq.Filter{Subscriber: "shipping", ErrorContains: "no-route"}); err != nil || n != 3 {
		t.Fatalf("Count = %d, %v; want 3", n, err)
	}
	if n, err := dlq.Replay(ctx, pool, dlq.Filter{Subscriber: "shipping", ErrorContains: "no-route"}); err != nil || n != 3 {
		t.Fatalf("Replay = %d, %v; want 3", n, err)
	}
	// A no-route letter never reached a stream: it goes back into the
	// outbox as the send it was, in send order, and the relay routes it to
	// the queue declared since.
	rows, err := pool.Query(ctx, `SELECT message_id FROM postbox.outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	back, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil || !slices.Equal(back, sent) {
		t.Fatalf("outbox after replay = %v (%v), want the sends in order %v", back, err, sent)
	}
	if n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.dead_letters`); n != 0 {
		t.Fatalf("%d dead letters after the replay, want 0", n)
	}
	if _, err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if d := pgtest.Depths(t, ctx, pool, "shipping"); d != (pgtest.Depth{Ready: 3}) {
		t.Fatalf("shipping depths %+v, want 3 ready, none dead", d)
	}

	// The queue's consumer handles each once, a key's in send order.
	var mu sync.Mutex
	var handled []uuid.UUID
	replayCounts := map[uuid.UUID]string{}
	c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "shipping", NoListen: true,
		Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			mu.Lock()
			defer mu.Unlock()
			handled = append(handled, d.ID)
			replayCounts[d.ID] = d.Headers[postbox.HeaderReplayCount]
			return nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, ctx, 20*time.Second, "the replayed letters handled", func() bool {
		if _, err := c.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		return pgtest.Depths(t, ctx, pool, "shipping") == pgtest.Depth{}
	})
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != 3 || !slices.Contains(handled, sent[1]) ||
		slices.Index(handled, sent[0]) < 0 || slices.Index(handled, sent[0]) > slices.Index(handled, sent[2]) {
		t.Fatalf("handled %v, want each of %v once, %s before %s", handled, sent, sent[0], sent[2])
	}
	for id, n := range replayCounts {
		if n != "1" {
			t.Errorf("%s handled with %s %q, want 1", id, postbox.HeaderReplayCount, n)
		}
	}
}

// A replay never hands a key's later message to its subscriber while an
// earlier one of the key stays dead: Count and Replay leave out a letter
// whose key has an earlier dead letter the filter leaves behind (Purge and
// CountPurge do not). Replayed letters keep their original seq and are due
// in that order, ahead of the key's later pending deliveries.
func TestReplayKeepsKeyOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)

	k1 := &letter{sub: "inventory", typ: "t", err: "error a", deadAt: at(1), key: "k"}
	k2 := &letter{sub: "inventory", typ: "t", err: "error b", deadAt: at(2), key: "k"}
	k3 := &letter{sub: "inventory", typ: "t", err: "error a", deadAt: at(3), key: "k"}
	x := &letter{sub: "inventory", typ: "t", err: "error b", deadAt: at(4)}
	// A later delivery of the key in backoff, due now.
	later := &letter{sub: "inventory", typ: "t", err: "flaky", deadAt: at(5), key: "k", attempts: 1, pending: true}
	insert(t, pool, k1, k2, k3, x, later)
	if _, err := pool.Exec(ctx, `UPDATE postbox.parked SET available_at = now() - interval '1 second' WHERE message_id = $1`, later.id); err != nil {
		t.Fatal(err)
	}
	seqs := map[uuid.UUID]int64{}
	for _, l := range []*letter{k1, k2, k3} {
		r, _ := get(t, pool, l.sub, l.id)
		seqs[l.id] = r.seq
	}

	onlyB := dlq.Filter{Subscriber: "inventory", ErrorContains: "error b"}
	onlyA := dlq.Filter{Subscriber: "inventory", ErrorContains: "error a"}
	for _, c := range []struct {
		name          string
		f             dlq.Filter
		replay, purge int
		listed        []*letter
		note          string
	}{
		// k2 waits behind k1, which "error b" leaves dead.
		{"error b", onlyB, 1, 2, []*letter{k2, x}, "x only"},
		// k3 waits behind k2, which "error a" leaves dead.
		{"error a", onlyA, 1, 2, []*letter{k1, k3}, "k1 only"},
		{"every letter", dlq.Filter{Subscriber: "inventory"}, 4, 4, []*letter{k1, k2, k3, x}, "all"},
		{"k3 by ID", dlq.Filter{Subscriber: "inventory", IDs: ids(k3)}, 0, 1, []*letter{k3}, "none"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if n, err := dlq.Count(ctx, pool, c.f); err != nil || n != c.replay {
				t.Errorf("%s: Count = %d, %v; want %d (%s)", c.name, n, err, c.replay, c.note)
			}
			if n, err := dlq.CountPurge(ctx, pool, c.f); err != nil || n != c.purge {
				t.Errorf("%s: CountPurge = %d, %v; want %d", c.name, n, err, c.purge)
			}
			got, err := dlq.List(ctx, pool, c.f)
			if err != nil {
				t.Fatal(err)
			}
			var gotIDs []uuid.UUID
			for _, d := range got {
				gotIDs = append(gotIDs, d.MessageID)
			}
			if !slices.Equal(gotIDs, ids(c.listed...)) {
				t.Errorf("%s: List = %v, want %v", c.name, gotIDs, ids(c.listed...))
			}
		})
	}

	if n, err := dlq.Replay(ctx, pool, dlq.Filter{Subscriber: "inventory", IDs: ids(k3)}); err != nil || n != 0 {
		t.Fatalf("Replay of k3 alone = %d, %v; want 0 while k1 and k2 are dead", n, err)
	}
	if n, err := dlq.Replay(ctx, pool, onlyB); err != nil || n != 1 {
		t.Fatalf("Replay error b = %d, %v; want 1 (x)", n, err)
	}
	checkReplayed(t, pool, "inventory", x.id, 1, true)
	for _, l := range []*letter{k1, k2, k3} {
		checkDead(t, pool, l)
	}
	if r, _ := get(t, pool, later.sub, later.id); !r.available {
		t.Fatalf("the key's later delivery %+v, want still due while no letter of its key is replayed", r)
	}

	if n, err := dlq.Replay(ctx, pool, dlq.Filter{Subscriber: "inventory"}); err != nil || n != 3 {
		t.Fatalf("Replay of the rest = %d, %v; want 3", n, err)
	}
	// The key's head is due; the others wait behind it in original order.
	checkReplayed(t, pool, "inventory", k1.id, 1, true)
	checkReplayed(t, pool, "inventory", k2.id, 1, false)
	checkReplayed(t, pool, "inventory", k3.id, 1, false)
	for _, l := range []*letter{k1, k2, k3} {
		if r, _ := get(t, pool, l.sub, l.id); r.seq != seqs[l.id] {
			t.Errorf("%s: seq %d after replay, want its original %d", l.id, r.seq, seqs[l.id])
		}
	}
	r, _ := get(t, pool, later.sub, later.id)
	if r.state != "parked" || r.available || r.attempts != 1 {
		t.Fatalf("the key's later delivery after the replay: %+v, want parked behind the replayed letters, attempts kept", r)
	}
	if n := scalar(t, pool, `SELECT count(*) FROM postbox.replays`); n != 4 {
		t.Fatalf("%d replay records, want 4", n)
	}
}

// Letters of dlq.Relay are outbox rows the relay could not move; replaying
// them puts them back into the outbox as they were, and the relay then
// delivers them.
func TestReplayRelayLettersRequeuesThem(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	if err := dispatcher.DeclareQueue(ctx, pool, "work", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	id := postbox.NewID()
	// What postbox.quarantine_outbox writes for a queue send to "work".
	if _, err := pool.Exec(ctx, `
		INSERT INTO postbox.dead_letters (subscriber, message_id, part, seq, key_hash, is_queue, topic, type, key,
		                                  payload, headers, created_at, last_error, last_error_at, dead_at)
		SELECT '_relay', $1, (h.kh % 16)::smallint, nextval('postbox.outbox_seq'), h.kh, true, 'work', 'job.v1', 'job-1',
		       '{"job":1}', postbox.dead_letter_headers('{"correlation-id":"c-1"}', 0, 'relay: boom'),
		       now() - interval '1 minute', 'relay: boom', now(), now()
		FROM (SELECT postbox.key_hash(convert_to('job-1', 'UTF8')) AS kh) h`, id); err != nil {
		t.Fatal(err)
	}

	letters, err := dlq.List(ctx, pool, dlq.Filter{Subscriber: dlq.Relay})
	if err != nil || len(letters) != 1 || letters[0].MessageID != id || letters[0].Subscriber != dlq.Relay ||
		letters[0].LastError != "relay: boom" {
		t.Fatalf("List of %s = %+v, %v; want the one letter", dlq.Relay, letters, err)
	}
	if n, err := dlq.Count(ctx, pool, dlq.Filter{Subscriber: dlq.Relay}); err != nil || n != 1 {
		t.Fatalf("Count = %d, %v; want 1", n, err)
	}
	if n, err := dlq.Replay(ctx, pool, dlq.Filter{Subscriber: dlq.Relay}); err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v; want 1", n, err)
	}
	if _, err := dlq.Get(ctx, pool, dlq.Relay, id); !errors.Is(err, dlq.ErrNotFound) {
		t.Fatalf("Get after replay: err = %v, want ErrNotFound", err)
	}
	var isQueue bool
	var topic, typ, key, payload string
	if err := pool.QueryRow(ctx, `SELECT is_queue, topic, type, key, convert_from(payload, 'UTF8') FROM postbox.outbox WHERE message_id = $1`, id).
		Scan(&isQueue, &topic, &typ, &key, &payload); err != nil {
		t.Fatalf("the replayed row in the outbox: %v", err)
	}
	if !isQueue || topic != "work" || typ != "job.v1" || key != "job-1" || payload != `{"job":1}` {
		t.Fatalf("outbox row = queue %v %s %s %s %s, want the message as sent", isQueue, topic, typ, key, payload)
	}
	if log := replayLog(t, pool, dlq.Relay, id); len(log) != 1 || log[0].lastError == nil || *log[0].lastError != "relay: boom" {
		t.Fatalf("replays of the letter = %+v, want one with its error", log)
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := r.Drain(ctx); err != nil || res.Delivered != 1 {
		t.Fatalf("Drain = %+v, %v; want the message delivered", res, err)
	}
	if d := pgtest.Depths(t, ctx, pool, "work"); d != (pgtest.Depth{Ready: 1}) {
		t.Fatalf("work depths %+v, want the replayed message ready", d)
	}
}

// End to end, through a consumer: a replayed letter takes its place in its
// key. With KeyParks the key's later messages wait for it and it is handled
// first; with KeyProceeds (the default) they went on without it.
func TestReplayedLetterIsHandledInItsKeysOrder(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		keyOnDead string
		dead      pgtest.Depth // with message 0 dead
		before    []int        // handled before the replay
		want      []int        // handling order in the end
	}{
		{dispatcher.KeyParks, pgtest.Depth{Waiting: 3, Dead: 1}, nil, []int{0, 1, 2, 3}},
		{dispatcher.KeyProceeds, pgtest.Depth{Dead: 1}, []int{1, 2, 3}, []int{1, 2, 3, 0}},
	} {
		t.Run(c.keyOnDead, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := pgtest.Pool(t, 8)
			if err := dispatcher.DeclareQueue(ctx, pool, "work", dispatcher.Options{MaxAttempts: 1, KeyOnDead: c.keyOnDead}); err != nil {
				t.Fatal(err)
			}
			if _, err := pool.Exec(ctx, `CREATE TABLE effects (n int, at bigint GENERATED ALWAYS AS IDENTITY)`); err != nil {
				t.Fatal(err)
			}
			for i := range 4 {
				if err := outbox.Send(ctx, pool, &postbox.Message{Topic: "work", Key: "k", Payload: fmt.Appendf(nil, `{"n":%d}`, i)}); err != nil {
					t.Fatal(err)
				}
			}
			r, err := relay.New(pool, relay.Config{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.Drain(ctx); err != nil {
				t.Fatal(err)
			}
			var fixed atomic.Bool
			h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
				m, err := postbox.Decode[struct{ N int }](d.Payload)
				if err != nil {
					return err
				}
				if m.N == 0 && !fixed.Load() {
					return errors.New("not yet")
				}
				_, err = tx.Exec(ctx, `INSERT INTO effects (n) VALUES ($1)`, m.N)
				return err
			})
			cons, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "work", Handler: h, NoListen: true})
			if err != nil {
				t.Fatal(err)
			}
			until := func(what string, want pgtest.Depth) {
				t.Helper()
				pgtest.WaitFor(t, ctx, 20*time.Second, what, func() bool {
					if _, err := cons.RunOnce(ctx); err != nil {
						t.Fatal(err)
					}
					return pgtest.Depths(t, ctx, pool, "work") == want
				})
			}
			handled := func() []int {
				rows, err := pool.Query(ctx, `SELECT n FROM effects ORDER BY at`)
				if err != nil {
					t.Fatal(err)
				}
				ns, err := pgx.CollectRows(rows, pgx.RowTo[int])
				if err != nil {
					t.Fatal(err)
				}
				return ns
			}

			until("message 0 dead", c.dead)
			if got := handled(); !slices.Equal(got, c.before) {
				t.Fatalf("handled %v while message 0 is dead, want %v", got, c.before)
			}
			fixed.Store(true)
			if n, err := dlq.Replay(ctx, pool, dlq.Filter{Subscriber: "work"}); err != nil || n != 1 {
				t.Fatalf("Replay = %d, %v; want 1", n, err)
			}
			until("everything handled", pgtest.Depth{})
			if got := handled(); !slices.Equal(got, c.want) {
				t.Fatalf("handled %v, want %v (each once)", got, c.want)
			}
		})
	}
}
