package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

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
	"github.com/postbox-dev/postbox/stats"
)

// roles is a database with the group roles of `postbox grants --apply`
// under a name prefix of its own (roles are cluster-wide, and tests run in
// parallel), and a login role per group; all are dropped when the test ends.
type roles struct {
	url, prefix string
	admin       *pgxpool.Pool
}

func setupRoles(t *testing.T) roles {
	t.Helper()
	url := pgtest.URL(t)
	b := make([]byte, 5)
	rand.Read(b)
	r := roles{url: url, prefix: "pbt_" + hex.EncodeToString(b), admin: openPool(t, url)}
	t.Cleanup(func() {
		ctx := context.Background()
		rows, err := r.admin.Query(ctx, `SELECT rolname FROM pg_roles WHERE rolname LIKE $1 || '\_%' ORDER BY rolcanlogin DESC`, r.prefix)
		if err != nil {
			t.Errorf("listing test roles: %v", err)
			return
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Errorf("listing test roles: %v", err)
			return
		}
		for _, n := range names {
			id := pgx.Identifier{n}.Sanitize()
			// Their privileges live in this database; the roles in the cluster.
			if _, err := r.admin.Exec(ctx, "DROP OWNED BY "+id); err != nil {
				t.Errorf("drop owned by %s: %v", n, err)
			}
			if _, err := r.admin.Exec(ctx, "DROP ROLE "+id); err != nil {
				t.Errorf("drop role %s: %v", n, err)
			}
		}
	})
	runOK(t, url, "grants", "--apply", "--prefix", r.prefix)
	runOK(t, url, "grants", "--apply", "--prefix", r.prefix) // idempotent
	return r
}

// login creates a login role that is a member of the groups (named
// without the prefix) and returns its URL and a pool connected as it.
func (r roles) login(t *testing.T, name string, groups ...string) (string, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	user := r.prefix + "_" + name
	in := make([]string, len(groups))
	for i, g := range groups {
		in[i] = r.prefix + "_" + g
	}
	const password = "test-only-password"
	if _, err := r.admin.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s' IN ROLE %s", user, password, strings.Join(in, ", "))); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(r.url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.User, cfg.ConnConfig.Password = user, password
	cfg.MaxConns = 6
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	u := strings.Replace(r.url, "postgres://postgres@", "postgres://"+user+":"+password+"@", 1)
	return u, pool
}

// refused fails t unless err is PostgreSQL's insufficient_privilege.
func refused(t *testing.T, what string, err error) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Errorf("%s: %v, want permission denied (SQLSTATE 42501)", what, err)
	}
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func TestGrantsPrintsTheScript(t *testing.T) {
	t.Parallel()
	out := run(t, nil, "grants")
	if out.code != 0 {
		t.Fatalf("postbox grants: exit %d: %s", out.code, out.stderr)
	}
	for _, want := range []string{"CREATE ROLE postbox_producer NOLOGIN", "postbox_relay", "postbox_consumer", "postbox_operator",
		"GRANT INSERT ON postbox.outbox, postbox.outbox_0", "TRUNCATE ON postbox.inbox_0", "GRANT pg_monitor TO postbox_operator"} {
		if !strings.Contains(out.stdout, want) {
			t.Errorf("the script lacks %q", want)
		}
	}
	if res := run(t, nil, "grants", "--prefix", "Bad-Name"); res.code != 2 {
		t.Errorf("--prefix Bad-Name: exit %d, want 2", res.code)
	}
}

// Each role does its job, and is refused everything else.
func TestLeastPrivilegeRoles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := setupRoles(t)
	_, producer := r.login(t, "app", "producer")
	_, relayer := r.login(t, "mover", "relay")
	_, consumer := r.login(t, "worker", "consumer")
	_, publishingConsumer := r.login(t, "worker2", "consumer", "producer")
	opsURL, operator := r.login(t, "ops", "operator")

	// The operator declares the routing.
	must(t, "operator declares a queue", dispatcher.DeclareQueue(ctx, operator, "work", dispatcher.Options{MaxAttempts: 1}))
	must(t, "operator subscribes", dispatcher.Subscribe(ctx, operator, dispatcher.Subscription{Subscriber: "audit", Topic: "orders.#"}))
	must(t, "operator declares a second queue", dispatcher.DeclareQueue(ctx, operator, "followups", dispatcher.Options{}))

	// The producer publishes, one by one and in batches.
	for _, key := range []string{"ok-1", "ok-2", "fail", "publish"} {
		must(t, "producer sends", outbox.Send(ctx, producer, &postbox.Message{Topic: "work", Key: key, Payload: []byte(`{}`)}))
	}
	must(t, "producer publishes", outbox.Publish(ctx, producer, &postbox.Message{Topic: "orders.created", Key: "o1", Payload: []byte(`{}`)}))
	must(t, "producer publishes a batch", outbox.PublishBatch(ctx, producer, []*postbox.Message{
		{Topic: "orders.created", Key: "o2", Payload: []byte(`{}`)}, {Topic: "orders.paid", Payload: []byte(`{}`)}}))
	must(t, "producer sends to a missing queue", outbox.Send(ctx, producer, &postbox.Message{Topic: "nowhere", Payload: []byte(`{}`)}))

	// The relay moves them, empties slots and forgets old handled IDs.
	rl, err := relay.New(relayer, relay.Config{})
	must(t, "relay", err)
	res, err := rl.Drain(ctx)
	must(t, "relay drains", err)
	if res.Claimed != 8 || res.NoRoute != 1 || res.Quarantined != 0 {
		t.Fatalf("relay moved %+v, want 8 claimed with one no-route", res)
	}
	rl.Chores(ctx)
	if st := rl.Stats(); st.Errors != 0 {
		t.Errorf("relay chores: %d errors", st.Errors)
	}
	// What Chores runs, seen to succeed: the slot rotation (LOCK, TRUNCATE)
	// and the horizon (pg_locks, the sequence).
	// An emptied outbox slot and a stream slot nobody needs, far from the
	// current ones.
	var outSlot, inSlot int
	must(t, "slots", r.admin.QueryRow(ctx, `SELECT (postbox.outbox_slot() + 4) % 8,
		((((SELECT last_value FROM postbox.inbox_seq) >> 16) & 7) + 4) % 8`).Scan(&outSlot, &inSlot))
	for _, sql := range []string{
		fmt.Sprintf(`INSERT INTO postbox.outbox_%[1]d (slot, message_id, key_hash, topic, payload)
			VALUES (%[1]d, gen_random_uuid(), 1, 'gone', '\x00')`, outSlot),
		fmt.Sprintf("DELETE FROM postbox.outbox_%d", outSlot),
		fmt.Sprintf(`INSERT INTO postbox.inbox_%[1]d (subscriber, part, seq, message_id, key_hash, topic, payload, available_at, created_at)
			VALUES ('ghost', 0, %[1]d * 65536 + 1, gen_random_uuid(), 1, 'gone', '\x00', now(), now())`, inSlot),
	} {
		_, err := r.admin.Exec(ctx, sql)
		must(t, sql, err)
	}
	var emptied int
	must(t, "the relay role rotates slots", relayer.QueryRow(ctx, "SELECT postbox.rotate_slots()").Scan(&emptied))
	if emptied != 2 {
		t.Errorf("the relay role emptied %d slots, want the two left for it", emptied)
	}
	_, err = relayer.Exec(ctx, "SELECT * FROM postbox.outbox_horizon('{}')")
	must(t, "the relay role reads the outbox horizon", err)
	// The Sink path: a message not yet due waits in postbox.scheduled, a
	// due one goes to the sink.
	must(t, "producer sends a delayed message", outbox.Send(ctx, producer, &postbox.Message{Topic: "work", Key: "later",
		Payload: []byte(`{}`), DeliverAt: time.Now().Add(time.Hour)}))
	must(t, "producer sends to the sink", outbox.Send(ctx, producer, &postbox.Message{Topic: "work", Key: "sunk", Payload: []byte(`{}`)}))
	var sunk int
	sinker, err := relay.New(relayer, relay.Config{Sink: dispatcher.SinkFunc(func(_ context.Context, batch []dispatcher.Envelope) error {
		sunk += len(batch)
		return nil
	})})
	must(t, "sink relay", err)
	_, err = sinker.Drain(ctx)
	must(t, "the relay role relays to a sink", err)
	sinker.Chores(ctx)
	var released int
	must(t, "the relay role releases scheduled messages", relayer.QueryRow(ctx, "SELECT postbox.release_scheduled(10)").Scan(&released))
	if sunk != 1 || pgtest.Count(t, ctx, r.admin, "SELECT count(*) FROM postbox.scheduled") != 1 {
		t.Errorf("the sink took %d messages, want the due one; the other should wait in postbox.scheduled", sunk)
	}
	if st := sinker.Stats(); st.Errors != 0 {
		t.Errorf("sink relay: %d errors", st.Errors)
	}

	j, err := inbox.NewJanitor(relayer, inbox.JanitorConfig{})
	must(t, "janitor", err)
	_, err = j.RunOnce(ctx)
	must(t, "the relay role runs the janitor", err)

	// The consumer claims, completes and fails deliveries; a consumer that
	// is also a producer publishes from its handler.
	handler := func(publishes bool) inbox.Handler {
		return inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			switch d.Key {
			case "fail":
				return postbox.Permanent(errors.New("not an order"))
			case "publish":
				err := outbox.Send(ctx, tx, &postbox.Message{Topic: "followups", Payload: []byte(`{}`)})
				if publishes {
					return err
				}
				refused(t, "a consumer that is not a producer publishes", err)
				return err
			}
			return nil
		})
	}
	c, err := inbox.NewConsumer(consumer, inbox.Config{Subscriber: "work", NoListen: true, Handler: handler(false)})
	must(t, "consumer", err)
	pgtest.WaitFor(t, ctx, 20*time.Second, "work's deliveries to be handled or dead", func() bool {
		_, err := c.RunOnce(ctx)
		must(t, "consumer runs", err)
		d := pgtest.Depths(t, ctx, r.admin, "work")
		return d.Dead == 2 && d.Pending() == 0 // fail, and publish: refused, then out of attempts
	})
	if n := pgtest.Count(t, ctx, r.admin, "SELECT count(*) FROM postbox.processed WHERE subscriber = 'work'"); n != 2 {
		t.Errorf("work handled %d, want ok-1 and ok-2", n)
	}
	dup, err := inbox.HandleOnce(ctx, consumer, "webhooks", &postbox.Message{ID: postbox.NewID(), Topic: "hook", Payload: []byte(`{}`)},
		inbox.HandlerFunc(func(context.Context, pgx.Tx, *inbox.Delivery) error { return nil }))
	must(t, "consumer HandleOnce", err)
	if dup {
		t.Error("HandleOnce: a new ID seen as a duplicate")
	}

	// The operator replays the letter that failed for want of rights; a
	// consumer that may publish handles it.
	st, err := stats.Read(ctx, operator)
	must(t, "operator reads stats", err)
	if len(st.Subscribers) == 0 {
		t.Error("operator's stats list no subscriber")
	}
	letters, err := dlq.List(ctx, operator, dlq.Filter{Subscriber: "work"})
	must(t, "operator lists dead letters", err)
	if len(letters) != 2 {
		t.Fatalf("work's dead letters = %d, want 2", len(letters))
	}
	n, err := dlq.Count(ctx, operator, dlq.Filter{Subscriber: "work", ErrorContains: "permission denied"})
	must(t, "operator counts", err)
	replayed, err := dlq.Replay(ctx, operator, dlq.Filter{Subscriber: "work", ErrorContains: "permission denied"})
	must(t, "operator replays", err)
	if n != 1 || replayed != 1 {
		t.Fatalf("counted %d and replayed %d, want the one refused publish", n, replayed)
	}
	c2, err := inbox.NewConsumer(publishingConsumer, inbox.Config{Subscriber: "work", NoListen: true, Handler: handler(true)})
	must(t, "publishing consumer", err)
	pgtest.WaitFor(t, ctx, 20*time.Second, "the replayed letter to be handled", func() bool {
		_, err := c2.RunOnce(ctx)
		must(t, "publishing consumer runs", err)
		return pgtest.Depths(t, ctx, r.admin, "work").Pending() == 0
	})
	if n := pgtest.Count(t, ctx, r.admin, "SELECT count(*) FROM postbox.outbox WHERE topic = 'followups'"); n != 1 {
		t.Errorf("the handler's publish: %d in the outbox, want 1", n)
	}
	purged, err := dlq.Purge(ctx, operator, dlq.Filter{Subscriber: "nowhere"})
	must(t, "operator purges", err)
	if purged != 1 {
		t.Errorf("purged %d, want the no-route letter", purged)
	}
	must(t, "operator drops a subscriber", dispatcher.DropSubscriber(ctx, operator, "followups"))

	// The operator runs the doctor: every check can run.
	var rep doctorReport
	out := run(t, nil, "doctor", "--json", "--database-url", opsURL)
	if err := json.Unmarshal([]byte(out.stdout), &rep); err != nil {
		t.Fatalf("doctor as operator: %v\n%s\n%s", err, out.stdout, out.stderr)
	}
	for _, c := range rep.Checks {
		if c.Error != "" {
			t.Errorf("doctor as operator: %s could not run: %s", c.Check, c.Error)
		}
	}

	// Everything else is refused.
	dlqFilter := dlq.Filter{Subscriber: "work"}
	for _, who := range []struct {
		name string
		pool *pgxpool.Pool
	}{{"producer", producer}, {"relay", relayer}, {"consumer", consumer}} {
		t.Run(who.name+" operates", func(t *testing.T) {
			_, err := dlq.Replay(ctx, who.pool, dlqFilter)
			refused(t, who.name+" replays", err)
			_, err = dlq.Purge(ctx, who.pool, dlqFilter)
			refused(t, who.name+" purges", err)
			_, err = dlq.List(ctx, who.pool, dlqFilter)
			refused(t, who.name+" reads dead letters", err)
			refused(t, who.name+" declares a queue", dispatcher.DeclareQueue(ctx, who.pool, "sneaky", dispatcher.Options{}))
			_, err = who.pool.Exec(ctx, "TRUNCATE postbox.dead_letters")
			refused(t, who.name+" truncates dead letters", err)
		})
	}
	for _, who := range []struct {
		name string
		pool *pgxpool.Pool
	}{{"producer", producer}, {"consumer", consumer}, {"operator", operator}} {
		t.Run(who.name+" relays", func(t *testing.T) {
			r, err := relay.New(who.pool, relay.Config{})
			must(t, "relay", err)
			_, err = r.RunOnce(ctx)
			refused(t, who.name+" relays", err)
			_, err = who.pool.Exec(ctx, "TRUNCATE postbox.inbox_0")
			refused(t, who.name+" truncates a stream slot", err)
		})
	}
	for _, who := range []struct {
		name string
		pool *pgxpool.Pool
	}{{"producer", producer}, {"relay", relayer}, {"operator", operator}} {
		t.Run(who.name+" consumes", func(t *testing.T) {
			c, err := inbox.NewConsumer(who.pool, inbox.Config{Subscriber: "audit", NoListen: true,
				Handler: inbox.HandlerFunc(func(context.Context, pgx.Tx, *inbox.Delivery) error { return nil })})
			must(t, "consumer", err)
			_, err = c.RunOnce(ctx)
			refused(t, who.name+" consumes", err)
		})
	}
	refused(t, "consumer publishes", outbox.Publish(ctx, consumer, &postbox.Message{Topic: "orders.created", Payload: []byte(`{}`)}))
	for _, sql := range []string{
		"SELECT count(*) FROM postbox.inbox",
		"SELECT count(*) FROM postbox.outbox",
		"SELECT count(*) FROM postbox.processed",
		"DELETE FROM postbox.outbox",
	} {
		_, err := producer.Exec(ctx, sql)
		refused(t, "producer: "+sql, err)
	}
	for _, sql := range []string{
		"SELECT payload FROM postbox.dead_letters",
		"SELECT count(*) FROM postbox.outbox",
		"UPDATE postbox.subscribers SET max_attempts = 100",
	} {
		_, err := consumer.Exec(ctx, sql)
		refused(t, "consumer: "+sql, err)
	}
	_, err = relayer.Exec(ctx, "SELECT payload FROM postbox.dead_letters")
	refused(t, "relay reads dead letter payloads", err)
	_, err = relayer.Exec(ctx, "UPDATE postbox.subscriptions SET filter = NULL")
	refused(t, "relay changes subscriptions", err)
	_, err = operator.Exec(ctx, "UPDATE postbox.inbox_cursors SET next_seq = next_seq + 1")
	refused(t, "operator moves a cursor", err)
}

func TestOperatorCommandsHelp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"admin", "--help"}, []string{"usage: postbox admin", "--read-only", envAdminToken, "frame-ancestors"}},
		{[]string{"doctor", "--help"}, []string{"usage: postbox doctor", "--xact-age", "--json", "--skip", "replication-slots"}},
		{[]string{"grants", "--help"}, []string{"usage: postbox grants", "--apply", "--prefix"}},
		{[]string{"relay", "--help"}, []string{"--stall-after", "--admin", "--admin-read-only"}},
		{[]string{"stats", "--help"}, []string{"--cap", "estimated"}},
		{[]string{"--help"}, []string{"admin", "doctor", "grants"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			res := run(t, nil, tc.args...)
			if res.code != 0 || res.stderr != "" {
				t.Errorf("postbox %s: exit %d, stderr %q", strings.Join(tc.args, " "), res.code, res.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(res.stdout, w) {
					t.Errorf("postbox %s lacks %q", strings.Join(tc.args, " "), w)
				}
			}
		})
	}
}
