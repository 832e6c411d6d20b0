package chaos

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
)

// TestMain runs a role when the binary was started as one (see roles_test.go);
// otherwise the tests.
func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role))
	}
	os.Exit(m.Run())
}

// form is one shape of the chaos run.
type form struct {
	name string
	// The work: keys × perKey messages, published by producers processes
	// of producerWorkers goroutines at rate messages a second in all.
	keys, perKey               int
	producers, producerWorkers int
	rate                       float64
	// ambiguousEvery: one commit in this many is cut off on purpose.
	ambiguousEvery int
	relays         int
	consumers      int // processes, each consuming both subscribers
	concurrency    int // inbox.Config.Concurrency per subscriber and process
	// Kills: one every killEvery (±50%) from killFrom, at least minKills,
	// and none once the producers are done and minKills are reached.
	killFrom, killEvery time.Duration
	minKills            int
	// Terminate storms: each lasts stormFor; the first at stormFrom, then
	// one every stormEvery (0: only one).
	stormFrom, stormEvery, stormFor time.Duration
	// Long form only: a private cluster, restarted once at restartAt, with
	// the horizon pinned from pinFrom for pinFor.
	ownCluster        bool
	restartAt         time.Duration
	pinFrom, pinFor   time.Duration
	stallAfter, limit time.Duration
}

func (f form) messages() int { return f.keys * f.perKey }

var shortForm = form{
	name: "short",
	keys: 40, perKey: 125, // 5,000 messages
	producers: 1, producerWorkers: 4, rate: 900,
	ambiguousEvery: 15,
	relays:         2, consumers: 2, concurrency: 2,
	killFrom: 700 * time.Millisecond, killEvery: 900 * time.Millisecond, minKills: 6,
	stormFrom: 2500 * time.Millisecond, stormFor: 1500 * time.Millisecond,
	stallAfter: 30 * time.Second, limit: 3 * time.Minute,
}

var longForm = form{
	name: "long",
	keys: 400, perKey: 250, // 100,000 messages
	producers: 3, producerWorkers: 4, rate: 800,
	ambiguousEvery: 25,
	relays:         3, consumers: 4, concurrency: 2,
	killFrom: time.Second, killEvery: 2 * time.Second, minKills: 60,
	stormFrom: 10 * time.Second, stormEvery: 20 * time.Second, stormFor: time.Second,
	ownCluster: true, restartAt: 80 * time.Second,
	pinFrom: 15 * time.Second, pinFor: 50 * time.Second,
	stallAfter: 90 * time.Second, limit: 25 * time.Minute,
}

// TestChaos runs the short form, or the long one when POSTBOX_CHAOS=long.
func TestChaos(t *testing.T) {
	t.Parallel()
	f := shortForm
	switch v := os.Getenv("POSTBOX_CHAOS"); v {
	case "", "short":
	case "long":
		f = longForm
	default:
		t.Fatalf("POSTBOX_CHAOS=%q: want short (the default) or long", v)
	}
	t.Logf("chaos, %s form: %d messages on %d keys, %d relays, %d consumers, %d producers",
		f.name, f.messages(), f.keys, f.relays, f.consumers, f.producers)
	ctx, cancel := context.WithTimeout(t.Context(), f.limit)
	defer cancel()

	var url, pinURL string
	var pg *cluster
	if f.ownCluster {
		pg = startCluster(t)
		url = pg.createDatabase(t, ctx, "chaos")
		pinURL = pg.url("postgres") // another database of the same cluster
	} else {
		url = pgtest.URL(t)
	}
	pool := openPool(t, url, 4, "chaos-test")
	setup(t, ctx, pool)

	run := newRun(t, ctx, f, url, pinURL, pool, pg)
	report := run.execute()
	t.Log(report)
	if report.failed() {
		t.Error(report.diagnosis)
	}
}

// The two subscribers: chaos-a takes every message through a Handler,
// chaos-b those whose seq is not a multiple of 3 (a subscription filter)
// through a BatchHandler.
const (
	topic     = "chaos.orders"
	subA      = "chaos-a"
	subB      = "chaos-b"
	filterB   = "$.seq % 3 != 0"
	appRole   = "chaos-role-" // application_name prefix of every role's sessions
	failOneIn = 40            // handlers fail the first attempt of about 1 delivery in this many
)

func setup(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
	t.Helper()
	if _, err := pool.Exec(ctx, ledgerSchema); err != nil {
		t.Fatalf("create the chaos tables: %v", err)
	}
	// Quick retries, and never a dead letter: every delivery must end up
	// handled.
	opts := dispatcher.Options{MaxAttempts: 1000, Backoff: dispatcher.Backoff{
		Initial: 20 * time.Millisecond, Max: 300 * time.Millisecond, Multiplier: 2}}
	for _, s := range []dispatcher.Subscription{
		{Subscriber: subA, Topic: "chaos.#"},
		{Subscriber: subB, Topic: "chaos.*", Filter: filterB},
	} {
		if err := dispatcher.DeclareSubscriber(ctx, pool, s.Subscriber, opts); err != nil {
			t.Fatal(err)
		}
		if err := dispatcher.Subscribe(ctx, pool, s); err != nil {
			t.Fatal(err)
		}
	}
}

// openPool opens a pool whose sessions are named appName. It closes with t.
func openPool(t *testing.T, url string, maxConns int32, appName string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = maxConns
	cfg.ConnConfig.RuntimeParams["application_name"] = appName
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func keyName(k int) string { return fmt.Sprintf("k-%04d", k) }

// indent prefixes every line of s.
func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix)
}
