package dispatcher_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/murmur2"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// patternCases: does pattern match topic? Checked through PostgreSQL's ~
// operator on ('.' || topic), which is how the relay matches, and through
// Go's regexp, which must agree.
var patternCases = []struct {
	pattern, topic string
	match          bool
}{
	{"order.*", "order.created", true},
	{"order.*", "order.updated", true},
	{"order.*", "order", false},
	{"order.*", "order.a.b", false},
	{"order.*", "orders.created", false},
	{"order.*", "xorder.created", false},
	{"order.#", "order", true},
	{"order.#", "order.a", true},
	{"order.#", "order.a.b", true},
	{"order.#", "orders", false},
	{"order.#", "orders.a", false},
	{"order.#", "border.a", false},
	{"#", "order", true},
	{"#", "order.created", true},
	{"#", "a.b.c.d.e", true},
	{"*", "order", true},
	{"*", "order.created", false},
	{"*.created", "order.created", true},
	{"*.created", "invoice.created", true},
	{"*.created", "created", false},
	{"*.created", "a.b.created", false},
	{"*.created", "order.created.eu", false},
	{"a.#.z", "a.z", true},
	{"a.#.z", "a.b.z", true},
	{"a.#.z", "a.b.c.z", true},
	{"a.#.z", "a.z.b", false},
	{"a.#.z", "b.a.z", false},
	{"a.#.z", "az", false},
	{"a.#.z", "a.zz", false},
	{"#.created", "created", true},
	{"#.created", "order.eu.created", true},
	{"#.created", "order.created.eu", false},
	{"order-v2.*", "order-v2.created", true},
	{"order_v2.*", "order_v2.created", true},
	{"order_v2.*", "orderxv2.created", false},
}

func TestPatternRegexpMatchesInPostgres(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)

	var values []string
	var args []any
	for i, c := range patternCases {
		re, err := dispatcher.PatternRegexp(c.pattern)
		if err != nil {
			t.Fatalf("PatternRegexp(%q): %v", c.pattern, err)
		}
		if re == "" {
			t.Fatalf("PatternRegexp(%q) = \"\", want a regular expression for a wildcard pattern", c.pattern)
		}
		if got := regexp.MustCompile(re).MatchString("." + c.topic); got != c.match {
			t.Errorf("Go: %q (%s) on %q = %v, want %v", c.pattern, re, c.topic, got, c.match)
		}
		values = append(values, fmt.Sprintf("($%d::int, $%d::text, $%d::text)", 3*i+1, 3*i+2, 3*i+3))
		args = append(args, i, c.topic, re)
	}
	rows, err := pool.Query(ctx, `SELECT i, ('.' || topic) ~ re FROM (VALUES `+strings.Join(values, ", ")+`) AS v(i, topic, re) ORDER BY i`, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var i int
		var got bool
		if err := rows.Scan(&i, &got); err != nil {
			t.Fatal(err)
		}
		c := patternCases[i]
		if got != c.match {
			t.Errorf("PostgreSQL: %q on %q = %v, want %v", c.pattern, c.topic, got, c.match)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != len(patternCases) {
		t.Fatalf("checked %d cases in PostgreSQL, want %d", n, len(patternCases))
	}
}

func TestPatternRegexpValidation(t *testing.T) {
	t.Parallel()
	for _, exact := range []string{"order", "order.created", "order.created.eu", "a", "0", "order-v2.created_at"} {
		re, err := dispatcher.PatternRegexp(exact)
		if err != nil || re != "" {
			t.Errorf("PatternRegexp(%q) = %q, %v; want \"\", nil (an exact topic)", exact, re, err)
		}
	}
	for _, wild := range []string{"*", "#", "order.*", "order.#", "#.created", "a.*.#.z", "*.*"} {
		if re, err := dispatcher.PatternRegexp(wild); err != nil || re == "" {
			t.Errorf("PatternRegexp(%q) = %q, %v; want a regular expression", wild, re, err)
		}
	}
	for _, bad := range []string{
		"", "order.**", "Order", "order.Created", "a..b", ".order", "order.", ".", "order.cre*", "ord#er",
		"order created", "order/created", "order.créé", "order.*\x00", strings.Repeat("a", 201),
		strings.Repeat("a.", 100) + "*",
	} {
		_, err := dispatcher.PatternRegexp(bad)
		if !errors.Is(err, postbox.ErrInvalid) {
			t.Errorf("PatternRegexp(%q) error = %v, want ErrInvalid", bad, err)
		}
	}
}

// Partition is Kafka's default partitioner: toPositive(murmur2(key)) % n.
// The hashes below are from Kafka's UtilsTest.testMurmur2.
func TestPartitionAgreesWithKafka(t *testing.T) {
	t.Parallel()
	kafka := map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	}
	for key, hash := range kafka {
		t.Run(key, func(t *testing.T) {
			positive := int(uint32(hash) & 0x7fffffff)
			for _, n := range []int{1, 3, 12, 16, 100, 4096} {
				if got, want := dispatcher.Partition(key, n), positive%n; got != want {
					t.Errorf("Partition(%q, %d) = %d, want %d", key, n, got, want)
				}
			}
		})
	}
}

// Deliveries carry the partition Partition computes with the subscriber's
// own partition count (Delivery.Partition), and the relay writes each to
// the stream with the key's murmur2 hash, in order partition hash % 16.
func TestRelayPartitionsLikePartition(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 8)
	if err := dispatcher.DeclareQueue(ctx, pool, "twelve", dispatcher.Options{Partitions: 12}); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.DeclareSubscriber(ctx, pool, "seven", dispatcher.Options{Partitions: 7}); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "seven", Topic: "part.#"}); err != nil {
		t.Fatal(err)
	}
	keys := []string{"21", "foobar", "abc", "order-1", "order-2", "ß", "a-little-bit-long-string"}
	for _, k := range keys {
		if err := outbox.Send(ctx, pool, &postbox.Message{Topic: "twelve", Key: k, Payload: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		if err := outbox.Publish(ctx, pool, &postbox.Message{Topic: "part.x", Key: k, Payload: []byte(`{}`)}); err != nil {
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

	// The stream rows: the key's hash, and its order partition.
	rows, err := pool.Query(ctx, `SELECT subscriber, key, key_hash, part FROM postbox.inbox`)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var sub, key string
		var hash, part int
		if err := rows.Scan(&sub, &key, &hash, &part); err != nil {
			t.Fatal(err)
		}
		if want := murmur2.Positive([]byte(key)); int32(hash) != want {
			t.Errorf("%s: key %q has key_hash %d, want murmur2 %d", sub, key, hash, want)
		}
		if want := dispatcher.Partition(key, 16); part != want {
			t.Errorf("%s: key %q in order partition %d, want %d", sub, key, part, want)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 2*len(keys) {
		t.Errorf("%d deliveries, want %d", n, 2*len(keys))
	}

	// What handlers see.
	for sub, parts := range map[string]int{"twelve": 12, "seven": 7} {
		var mu sync.Mutex
		got := map[string]int{}
		c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: sub, NoListen: true,
			Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
				mu.Lock()
				defer mu.Unlock()
				got[d.Key] = d.Partition
				return nil
			})})
		if err != nil {
			t.Fatal(err)
		}
		pgtest.WaitFor(t, ctx, 20*time.Second, sub+"'s deliveries handled", func() bool {
			if _, err := c.RunOnce(ctx); err != nil {
				t.Fatal(err)
			}
			return pgtest.Depths(t, ctx, pool, sub).Pending() == 0
		})
		mu.Lock()
		if len(got) != len(keys) {
			t.Errorf("%s: handled keys %v, want %d", sub, got, len(keys))
		}
		for _, k := range keys {
			if p, ok := got[k]; !ok || p != dispatcher.Partition(k, parts) {
				t.Errorf("%s: key %q handled with Partition %d (seen %v), want %d", sub, k, p, ok, dispatcher.Partition(k, parts))
			}
		}
		mu.Unlock()
	}
}

func TestDeclareAndSubscribe(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)

	opts := dispatcher.Options{Partitions: 8, MaxAttempts: 3, DedupWindow: time.Hour,
		Backoff:   dispatcher.Backoff{Initial: 100 * time.Millisecond, Max: time.Minute, Multiplier: 3},
		KeyOnDead: dispatcher.KeyParks}
	if err := dispatcher.DeclareQueue(ctx, pool, "billing", opts); err != nil {
		t.Fatal(err)
	}
	got, err := dispatcher.GetSubscriber(ctx, pool, "billing")
	if err != nil {
		t.Fatal(err)
	}
	if got.Kind != dispatcher.KindQueue || got.Options != opts {
		t.Errorf("GetSubscriber = %+v, want queue with %+v", got, opts)
	}
	// Declaring again updates the settings.
	if err := dispatcher.DeclareQueue(ctx, pool, "billing", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := dispatcher.GetSubscriber(ctx, pool, "billing"); got.Options.MaxAttempts != dispatcher.DefaultMaxAttempts ||
		got.Options.Partitions != dispatcher.DefaultPartitions || got.Options.Backoff != dispatcher.DefaultBackoff ||
		got.Options.DedupWindow != dispatcher.DefaultDedupWindow || got.Options.KeyOnDead != dispatcher.KeyProceeds {
		t.Errorf("after redeclaring with defaults: %+v", got.Options)
	}

	// A queue is not a topic subscriber, and the other way round.
	err = dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "billing", Topic: "order.created"})
	if !errors.Is(err, dispatcher.ErrKindConflict) {
		t.Errorf("Subscribe a queue: err = %v, want ErrKindConflict", err)
	}
	if err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "audit", Topic: "order.#", Filter: "$.total > 10"}); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.DeclareQueue(ctx, pool, "audit", dispatcher.Options{}); !errors.Is(err, dispatcher.ErrKindConflict) {
		t.Errorf("DeclareQueue over a topic subscriber: err = %v, want ErrKindConflict", err)
	}
	if got, err := dispatcher.GetSubscriber(ctx, pool, "audit"); err != nil || got.Kind != dispatcher.KindTopic || got.Options.Partitions != dispatcher.DefaultPartitions {
		t.Errorf("Subscribe's implicit subscriber = %+v, %v; want a topic subscriber with defaults", got, err)
	}
	// Subscribing again replaces the filter.
	if err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "audit", Topic: "order.#", Filter: "$.total > 20"}); err != nil {
		t.Fatal(err)
	}
	subs, err := dispatcher.Subscriptions(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(subs) != 1 || subs[0].Subscriber != "audit" || subs[0].Topic != "order.#" || subs[0].Filter != "($.\"total\" > 20)" {
		t.Errorf("Subscriptions = %+v, want audit on order.# with the new filter", subs)
	}
	all, err := dispatcher.Subscribers(ctx, pool)
	if err != nil || len(all) != 2 || all[0].Name != "audit" || all[1].Name != "billing" {
		t.Errorf("Subscribers = %+v, %v", all, err)
	}

	if err := dispatcher.Unsubscribe(ctx, pool, "audit", "order.#"); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.Unsubscribe(ctx, pool, "audit", "order.#"); !errors.Is(err, dispatcher.ErrNotFound) {
		t.Errorf("second Unsubscribe: err = %v, want ErrNotFound", err)
	}
	if err := dispatcher.DropSubscriber(ctx, pool, "billing"); err != nil {
		t.Fatal(err)
	}
	if _, err := dispatcher.GetSubscriber(ctx, pool, "billing"); !errors.Is(err, dispatcher.ErrNotFound) {
		t.Errorf("GetSubscriber after drop: err = %v, want ErrNotFound", err)
	}
	if err := dispatcher.DropSubscriber(ctx, pool, "billing"); !errors.Is(err, dispatcher.ErrNotFound) {
		t.Errorf("second DropSubscriber: err = %v, want ErrNotFound", err)
	}
}

func TestOptionsValidation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)
	for _, o := range []dispatcher.Options{
		{Partitions: -1},
		{Partitions: 4097},
		{MaxAttempts: -2},
		{DedupWindow: -time.Second},
		{Backoff: dispatcher.Backoff{Initial: -time.Second}},
		{Backoff: dispatcher.Backoff{Initial: time.Minute, Max: time.Second}},
		{Backoff: dispatcher.Backoff{Multiplier: 0.5}},
		{KeyOnDead: "wait"},
		{KeyOnDead: "Park"},
	} {
		err := dispatcher.DeclareQueue(ctx, pool, "q", o)
		var ve *postbox.ValidationError
		if !errors.Is(err, postbox.ErrInvalid) || !errors.As(err, &ve) {
			t.Errorf("DeclareQueue(%+v) = %v, want a validation error", o, err)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM postbox.subscribers`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d subscribers after rejected declarations (%v), want 0", n, err)
	}
}

// KeyHash is the hash the producer stores: the outbox row of a published
// message carries it, for a key and for a message without one.
func TestKeyHashIsWhatTheOutboxStores(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)
	for _, key := range []string{"order-42", ""} {
		msg := &postbox.Message{Topic: "t", Key: key, Payload: []byte(`{}`)}
		if err := outbox.Publish(ctx, pool, msg); err != nil {
			t.Fatal(err)
		}
		var stored, sql int32
		if err := pool.QueryRow(ctx, `SELECT key_hash, postbox.key_hash(coalesce(convert_to(key, 'UTF8'), uuid_send(message_id)))
			FROM postbox.outbox WHERE message_id = $1`, msg.ID).Scan(&stored, &sql); err != nil {
			t.Fatal(err)
		}
		if got := dispatcher.KeyHash(key, msg.ID); got != stored || got != sql {
			t.Errorf("key %q: KeyHash = %d, outbox row %d, postbox.key_hash %d", key, got, stored, sql)
		}
	}
}

func TestSubscribeRefusesPathVariables(t *testing.T) {
	pool := pgtest.Pool(t, 2)
	for _, c := range []struct {
		filter string
		ok     bool
	}{
		{"$0", false},
		{"$.total ? (@ > $limit)", false},
		{`$"x y" == 1`, false},
		{`$.a ? (@ == $_)`, false},
		{`$.a == "$x"`, true},
		{`$.a == "\"$x"`, true},
		{`$.a[$.b] == 1`, true},
		{`$ ? (@.a == 1)`, true},
	} {
		t.Run(c.filter, func(t *testing.T) {
			err := dispatcher.Subscribe(t.Context(), pool, dispatcher.Subscription{Subscriber: "s", Topic: "t", Filter: c.filter})
			if c.ok && err != nil {
				t.Fatalf("Subscribe: %v", err)
			}
			if !c.ok && !errors.Is(err, postbox.ErrInvalid) {
				t.Fatalf("Subscribe: %v, want ErrInvalid", err)
			}
		})
	}
}
