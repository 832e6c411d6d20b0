package jetstream

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/relay"
)

// The relay child: the test binary started again with childEnv set runs a
// relay with the Sink instead of the tests (see TestMain).
const (
	childEnv       = "PBJS_RELAY_CHILD" // "run": relay until killed; "drain": drain, print stats, exit
	childDBEnv     = "PBJS_DATABASE_URL"
	childNATSEnv   = "PBJS_NATS_URL"
	childPrefixEnv = "PBJS_SUBJECT_PREFIX"
	childBatch     = 1000
)

// childStats is what a draining child prints as its last line.
type childStats struct {
	Relay relay.Stats
	Sink  SinkStats
}

func relayChild() int {
	ctx := context.Background()
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "relay child:", err)
		return 1
	}
	pool, err := pgxpool.New(ctx, os.Getenv(childDBEnv))
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	nc, err := nats.Connect(os.Getenv(childNATSEnv))
	if err != nil {
		return fail(err)
	}
	defer nc.Close()
	js, err := natsjs.New(nc)
	if err != nil {
		return fail(err)
	}
	prefix := os.Getenv(childPrefixEnv)
	sink, err := NewSink(js, SinkConfig{Subject: func(e *dispatcher.Envelope) string { return prefix + "." + e.Topic }})
	if err != nil {
		return fail(err)
	}
	var relaySink dispatcher.Sink = sink
	if os.Getenv(childEnv) == "run" {
		// Tell the test when the third batch is half published, so that
		// it kills this process while the rest is being published.
		var batches atomic.Int64
		relaySink = dispatcher.SinkFunc(func(ctx context.Context, b []dispatcher.Envelope) error {
			if batches.Add(1) != 3 || len(b) < 2 {
				return sink.Deliver(ctx, b)
			}
			half := len(b) / 2
			if err := sink.Deliver(ctx, b[:half]); err != nil {
				return err
			}
			fmt.Printf("published %d of a batch of %d\n", half, len(b))
			return sink.Deliver(ctx, b[half:])
		})
	}
	r, err := relay.New(pool, relay.Config{Sink: relaySink, BatchSize: childBatch})
	if err != nil {
		return fail(err)
	}
	fmt.Println("relaying")
	if os.Getenv(childEnv) == "run" {
		if err := r.Run(ctx); err != nil {
			return fail(err)
		}
		return 0
	}
	if _, err := r.Drain(ctx); err != nil {
		return fail(err)
	}
	b, err := json.Marshal(childStats{Relay: r.Stats(), Sink: sink.Stats()})
	if err != nil {
		return fail(err)
	}
	fmt.Println(string(b))
	return 0
}

// startChild starts the relay child in mode and waits for it to say it is
// relaying.
func startChild(t *testing.T, mode, dbURL, natsURL, prefix string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, childDBEnv+"="+dbURL, childNATSEnv+"="+natsURL, childPrefixEnv+"="+prefix)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "relaying" {
		t.Fatalf("relay child did not start: %q %v", lines.Text(), lines.Err())
	}
	return cmd, lines
}

// Issue 14's crash test, short form: a relay process is killed -9 while it
// publishes a batch (half of it acknowledged, the rest being published,
// its outbox rows not yet deleted). After a restart every message is in the stream exactly
// once, the re-sent part of the batch counted as duplicates, and the
// consuming side applies every effect once, in order per key.
func TestRelayKilledWhilePublishingLosesAndDuplicatesNothing(t *testing.T) {
	t.Parallel()
	const (
		messages = 5000
		keys     = 50
	)
	ctx := testContext(t, 3*time.Minute)
	dbURL := pgtest.URL(t)
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	createEffects(t, ctx, pool)
	natsURL := startServer(t)
	_, js := connect(t, natsURL)
	st := createStream(t, ctx, js, 2*time.Minute)
	ids := publish(t, ctx, pool, messages, keys)
	start := time.Now()

	child, out := startChild(t, "run", dbURL, natsURL, st.prefix)
	var half, size int
	if !out.Scan() {
		t.Fatalf("relay child ended before its third batch: %v", out.Err())
	}
	if _, err := fmt.Sscanf(out.Text(), "published %d of a batch of %d", &half, &size); err != nil {
		t.Fatalf("relay child printed %q: %v", out.Text(), err)
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := child.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("relay child ended with %v, want killed", err)
	}
	killedAt := st.msgs(t, ctx)
	t.Logf("%s: killed the relay while it published a batch of %d, %d of them acknowledged; %d of %d messages in the stream",
		time.Since(start).Round(time.Millisecond), size, half, killedAt, messages)
	if killedAt == messages {
		t.Fatal("the relay finished before it could be killed")
	}

	child, out = startChild(t, "drain", dbURL, natsURL, st.prefix)
	var stats childStats
	for out.Scan() {
		if err := json.Unmarshal(out.Bytes(), &stats); err != nil {
			t.Fatalf("relay child printed %q: %v", out.Text(), err)
		}
	}
	if err := child.Wait(); err != nil {
		t.Fatalf("draining relay child: %v", err)
	}
	t.Logf("%s: restarted relay drained the outbox: %+v", time.Since(start).Round(time.Millisecond), stats)
	if stats.Sink.Duplicates < int64(half) {
		t.Errorf("restarted relay's sink counted %d duplicates, want at least the %d of the interrupted batch acknowledged before the kill",
			stats.Sink.Duplicates, half)
	}
	checkStream(t, ctx, js, st, ids)

	c, err := NewConsumer(pool, createConsumer(t, ctx, js, st), ConsumerConfig{Subscriber: "inventory", Handler: effectHandler, Concurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	waitFor(t, ctx, 2*time.Minute, "every effect", func() bool {
		return count(t, ctx, pool, `SELECT count(*) FROM effects`) >= messages
	})
	stop()
	t.Logf("%s: consumer handled everything: %+v", time.Since(start).Round(time.Millisecond), c.Stats())
	checkEffects(t, ctx, pool, ids)
}
