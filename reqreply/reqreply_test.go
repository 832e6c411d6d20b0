package reqreply_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/dlq"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/reqreply"
)

// Two requester processes (children of the test binary) send many
// requests at once; each request gets its own reply, exactly one, and the
// reply queues they leave behind are swept once they are gone.
func TestTwoRequesterProcesses(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.startReplier(t)
	a, c := spawn(t, "requester", b.url, "a"), spawn(t, "requester", b.url, "c")
	var queues []string
	for _, p := range []*process{a, c} {
		line := p.line(t, 45*time.Second)
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "ok" || f[1] != fmt.Sprint(childRequests) {
			t.Fatalf("child said %q; stderr:\n%s", line, p.stderr.String())
		}
		queues = append(queues, f[2])
		<-p.done
		if p.err != nil {
			t.Fatalf("child: %v; stderr:\n%s", p.err, p.stderr.String())
		}
	}
	if queues[0] == queues[1] {
		t.Fatalf("both requesters used reply queue %s", queues[0])
	}
	for _, q := range queues {
		// Every reply handled once by its own requester's queue.
		if n := b.count(t, `SELECT count(*) FROM postbox.processed WHERE subscriber = $1`, q); n != childRequests {
			t.Errorf("%s handled %d replies, want %d", q, n, childRequests)
		}
	}
	if n := b.count(t, `SELECT count(*) FROM echo_effects`); n != 2*childRequests {
		t.Errorf("the replier's effects: %d, want %d", n, 2*childRequests)
	}
	if n := b.count(t, `SELECT count(*) FROM postbox.dead_letters`); n != 0 {
		t.Errorf("%d dead letters, want none", n)
	}

	// Both children are gone: a requester of their name drops their queues.
	sweeper, err := reqreply.NewRequester(b.pool, reqreply.Config{Name: "pair", Expiry: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := sweeper.Sweep(b.ctx); err != nil || n != 2 {
		t.Fatalf("Sweep = %d, %v; want both queues dropped", n, err)
	}
	if n := b.count(t, `SELECT count(*) FROM postbox.subscribers WHERE name LIKE 'pair.reply.%'`); n != 0 {
		t.Errorf("%d reply queues left after the sweep", n)
	}
}

// A replier process killed in the middle of handling a request, after it
// wrote its effect and its reply, commits neither: the redelivered request
// is answered by another replier, and the requester gets exactly one reply.
func TestReplierCrashYieldsOneReply(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r, _ := b.startRequester(t, b.pool, reqreply.Config{Name: "crash", Timeout: 40 * time.Second})
	replier := spawn(t, "replier", b.url, "")
	if l := replier.line(t, 20*time.Second); l != "ready" {
		t.Fatalf("replier said %q", l)
	}

	payload, _ := postbox.JSON(echoRequest{From: "crash", N: 7, Crash: true})
	msg := &postbox.Message{Topic: echoQueue, Payload: payload}
	type result struct {
		d   *inbox.Delivery
		err error
	}
	got := make(chan result, 1)
	go func() {
		d, err := r.Request(b.ctx, msg)
		got <- result{d, err}
	}()
	if l := replier.line(t, 30*time.Second); !strings.HasPrefix(l, "in-handler ") {
		t.Fatalf("replier said %q", l)
	}
	if err := replier.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-replier.done

	b.startReplier(t)
	res := <-got
	if res.err != nil {
		t.Fatalf("Request: %v", res.err)
	}
	if e := decodeReply(t, res.d); e.N != 7 || res.d.ID != reqreply.ReplyID(msg.ID, echoQueue) {
		t.Errorf("reply %s = %+v, want the echo of request 7 with ID %s", res.d.ID, e, reqreply.ReplyID(msg.ID, echoQueue))
	}
	if res.d.Headers[reqreply.HeaderReplier] != echoQueue || res.d.Headers[postbox.HeaderCausationID] != msg.ID.String() {
		t.Errorf("reply headers %v", res.d.Headers)
	}
	pgtest.WaitFor(t, b.ctx, 10*time.Second, "the reply marked handled", func() bool {
		return b.count(t, `SELECT count(*) FROM postbox.processed WHERE subscriber = $1`, r.ReplyQueue()) == 1
	})
	if n := b.count(t, `SELECT count(*) FROM echo_effects WHERE request_id = $1`, msg.ID); n != 1 {
		t.Errorf("the request's effect was written %d times, want once", n)
	}
	if n := b.count(t, `SELECT count(*) FROM postbox.inbox WHERE subscriber = $1`, r.ReplyQueue()); n != 1 {
		t.Errorf("%d replies reached the reply queue, want 1", n)
	}
}

// A reply that comes after its Request gave up goes to the Handler, or
// without one becomes a dead letter; it is never taken for the reply of a
// Request that is waiting at the same time.
func TestLateReply(t *testing.T) {
	t.Parallel()
	for _, withHandler := range []bool{true, false} {
		t.Run(fmt.Sprintf("handler=%t", withHandler), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			cfg := reqreply.Config{Name: "late"}
			if withHandler {
				cfg.Handler = recordReplies("late")
			}
			r, _ := b.startRequester(t, b.pool, cfg)

			// No replier runs yet: the first request times out.
			late := &postbox.Message{Topic: echoQueue, Payload: mustJSON(t, echoRequest{From: "late", N: 1})}
			ctx, cancel := context.WithTimeout(b.ctx, 150*time.Millisecond)
			_, err := r.Request(ctx, late)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, reqreply.ErrTimeout) {
				t.Fatalf("Request without a replier: %v, want a timeout", err)
			}
			short, _ := reqreply.NewRequester(b.pool, reqreply.Config{Name: "x", Timeout: time.Millisecond})
			if _, err := short.Request(b.ctx, &postbox.Message{Topic: echoQueue}); err == nil {
				t.Fatal("Request of a Requester that never ran succeeded")
			}

			// The second waits while both replies come.
			onTime := &postbox.Message{Topic: echoQueue, Payload: mustJSON(t, echoRequest{From: "on-time", N: 2})}
			got := make(chan *inbox.Delivery, 1)
			go func() {
				d, err := r.Request(b.ctx, onTime)
				if err != nil {
					t.Errorf("Request: %v", err)
				}
				got <- d
			}()
			pgtest.WaitFor(t, b.ctx, 10*time.Second, "the second request relayed", func() bool {
				return b.count(t, `SELECT count(*) FROM postbox.inbox WHERE subscriber = $1`, echoQueue) == 2
			})
			b.startReplier(t)
			d := <-got
			if d == nil {
				t.FailNow()
			}
			if e := decodeReply(t, d); e.From != "on-time" || d.Headers[postbox.HeaderCorrelationID] != onTime.ID.String() {
				t.Fatalf("the waiting request got %+v (correlation-id %s)", e, d.Headers[postbox.HeaderCorrelationID])
			}

			lateReply := reqreply.ReplyID(late.ID, echoQueue)
			if withHandler {
				pgtest.WaitFor(t, b.ctx, 10*time.Second, "the late reply handled", func() bool {
					return b.count(t, `SELECT count(*) FROM replies_seen WHERE reply_id = $1 AND correlation_id = $2`,
						lateReply, late.ID.String()) == 1
				})
				return
			}
			pgtest.WaitFor(t, b.ctx, 10*time.Second, "the late reply dead", func() bool {
				return pgtest.Depths(t, b.ctx, b.pool, r.ReplyQueue()).Dead == 1
			})
			letter, err := dlq.Get(b.ctx, b.pool, r.ReplyQueue(), lateReply)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(letter.LastError, "late reply") || letter.Attempts != 1 {
				t.Errorf("late reply's letter: %d attempts, %q", letter.Attempts, letter.LastError)
			}
		})
	}
}

// Send writes the request in the caller's transaction, and the reply goes
// to the Handler, whose effects commit once with the reply's handling.
func TestSendAsync(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r, _ := b.startRequester(t, b.pool, reqreply.Config{Name: "async", Handler: recordReplies("async")})
	b.startReplier(t)

	sent := make([]*postbox.Message, 5)
	for i := range sent {
		sent[i] = &postbox.Message{Topic: echoQueue, Payload: mustJSON(t, echoRequest{From: "async", N: i})}
		err := pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
			if err := r.Send(b.ctx, tx, sent[i]); err != nil {
				return err
			}
			if i == 4 {
				return errors.New("the business transaction fails") // and its request goes with it
			}
			return nil
		})
		if (err != nil) != (i == 4) {
			t.Fatalf("transaction %d: %v", i, err)
		}
	}
	pgtest.WaitFor(t, b.ctx, 10*time.Second, "4 replies handled", func() bool {
		return b.count(t, `SELECT count(*) FROM replies_seen`) == 4
	})
	for i, m := range sent[:4] {
		n := b.count(t, `SELECT count(*) FROM replies_seen WHERE causation_id = $1 AND correlation_id = $1
			AND payload::jsonb = $2::jsonb`, m.ID.String(), fmt.Sprintf(`{"echo": {"from": "async", "n": %d}}`, i))
		if n != 1 {
			t.Errorf("reply to request %d recorded %d times, want once", i, n)
		}
	}
	if err := r.Send(b.ctx, b.pool, nil); !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("Send(nil) = %v", err)
	}
	noHandler, _ := reqreply.NewRequester(b.pool, reqreply.Config{Name: "sync"})
	if err := noHandler.Send(b.ctx, b.pool, &postbox.Message{Topic: echoQueue}); !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("Send without a Handler = %v, want invalid", err)
	}
}

// A stopped requester's queue, with a reply still in it, is swept by a
// requester of the same name: the reply goes to the sweeper's Handler,
// and the queue is dropped after Expiry. Running requesters' queues stay.
func TestSweepOrphanedReplyQueues(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// A requester of its own pool (a process of its own, as far as the
	// database can tell) sends a request and stops before the reply.
	other := pgtest.Connect(t, b.pool, 4)
	gone, stop := b.startRequester(t, other, reqreply.Config{Name: "svc", Handler: recordReplies("gone")})
	req := &postbox.Message{Topic: echoQueue, Payload: mustJSON(t, echoRequest{From: "gone", N: 1})}
	if err := gone.Send(b.ctx, b.pool, req); err != nil {
		t.Fatal(err)
	}
	stop()
	live, _ := b.startRequester(t, b.pool, reqreply.Config{Name: "svc", Handler: recordReplies("live")})
	b.startReplier(t)
	pgtest.WaitFor(t, b.ctx, 10*time.Second, "the reply in the stopped requester's queue", func() bool {
		return pgtest.Depths(t, b.ctx, b.pool, gone.ReplyQueue()).Pending() == 1
	})

	patient, err := reqreply.NewRequester(b.pool, reqreply.Config{Name: "svc", Handler: recordReplies("patient"), Expiry: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := patient.Sweep(b.ctx); err != nil || n != 0 {
		t.Fatalf("Sweep before Expiry = %d, %v; want nothing dropped", n, err)
	}
	if n := b.count(t, `SELECT count(*) FROM replies_seen WHERE handled_by = 'patient' AND causation_id = $1`, req.ID.String()); n != 1 {
		t.Fatalf("the orphaned reply was handled %d times by the sweeper's Handler, want once", n)
	}
	sweeper, err := reqreply.NewRequester(b.pool, reqreply.Config{Name: "svc", Expiry: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := sweeper.Sweep(b.ctx); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want the stopped requester's queue dropped", n, err)
	}
	if _, err := dispatcher.GetSubscriber(b.ctx, b.pool, gone.ReplyQueue()); !errors.Is(err, dispatcher.ErrNotFound) {
		t.Errorf("the stopped requester's queue: %v, want it dropped", err)
	}
	if _, err := dispatcher.GetSubscriber(b.ctx, b.pool, live.ReplyQueue()); err != nil {
		t.Errorf("the running requester's queue: %v, want it kept", err)
	}
	if n := b.count(t, `SELECT count(*) FROM replies_seen`); n != 1 {
		t.Errorf("%d replies recorded in all, want 1", n)
	}
}

// Reply refuses a request nobody can answer, permanently; Config is
// checked field by field.
func TestRejects(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t, 2)
	ctx := context.Background()
	for _, to := range []string{"", "Not A Queue"} {
		d := &inbox.Delivery{Message: postbox.Message{ID: postbox.NewID(), Headers: map[string]string{postbox.HeaderReplyTo: to}}}
		err := reqreply.Reply(ctx, pool, d, &postbox.Message{})
		if !errors.Is(err, reqreply.ErrNoReplyTo) || !postbox.IsPermanent(err) {
			t.Errorf("Reply to %q: %v, want a permanent ErrNoReplyTo", to, err)
		}
	}
	tests := []struct {
		name  string
		pool  *pgxpool.Pool
		cfg   reqreply.Config
		field string
	}{
		{"nil pool", nil, reqreply.Config{Name: "a"}, "pool"},
		{"no name", pool, reqreply.Config{}, "Config.Name"},
		{"bad name", pool, reqreply.Config{Name: "A B"}, "Config.Name"},
		{"long name", pool, reqreply.Config{Name: strings.Repeat("a", 178)}, "Config.Name"},
		{"negative timeout", pool, reqreply.Config{Name: "a", Timeout: -1}, "Config.Timeout"},
		{"negative expiry", pool, reqreply.Config{Name: "a", Expiry: -1}, "Config.Expiry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := reqreply.NewRequester(tt.pool, tt.cfg)
			var ve *postbox.ValidationError
			if !errors.As(err, &ve) || ve.Field != tt.field {
				t.Errorf("NewRequester: %v, want a validation error of %s", err, tt.field)
			}
		})
	}
	r, err := reqreply.NewRequester(pool, reqreply.Config{Name: strings.Repeat("a", 177)})
	if err != nil || len(r.ReplyQueue()) != postbox.MaxNameLength || postbox.ValidateName("queue", r.ReplyQueue()) != nil {
		t.Errorf("longest name: %v, queue %q", err, r.ReplyQueue())
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := postbox.JSON(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A Requester whose lock connection is cut takes the lock again on a new
// one, and its queue stays declared and answered.
func TestLockConnectionLost(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.startReplier(t)
	r, _ := b.startRequester(t, b.pool, reqreply.Config{Name: "cut", SweepInterval: 20 * time.Millisecond})
	if _, err := r.Request(b.ctx, &postbox.Message{Topic: echoQueue, Payload: mustJSON(t, echoRequest{N: 1})}); err != nil {
		t.Fatal(err)
	}
	const holder = `SELECT coalesce((SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 1886352246
		AND objid = hashtext($1)::oid AND granted), 0)`
	first := b.count(t, holder, r.ReplyQueue())
	if first == 0 {
		t.Fatal("nobody holds the reply queue's lock")
	}
	if n := b.count(t, `SELECT count(*) FROM (SELECT pg_terminate_backend($1)) x`, first); n != 1 {
		t.Fatal("terminate the lock's backend")
	}
	pgtest.WaitFor(t, b.ctx, 10*time.Second, "the lock taken again", func() bool {
		pid := b.count(t, holder, r.ReplyQueue())
		return pid != 0 && pid != first
	})
	if _, err := r.Request(b.ctx, &postbox.Message{Topic: echoQueue, Payload: mustJSON(t, echoRequest{N: 2})}); err != nil {
		t.Fatalf("Request after the lock connection was cut: %v", err)
	}
}
