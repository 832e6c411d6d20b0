package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/dlq"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// A send to a queue nobody declared is not lost: it becomes a dead letter of
// that queue name with reason no-route, visible in postbox.dead_letters, and
// can be replayed once the queue exists.
func TestSendToUndeclaredQueueBecomesNoRouteDeadLetter(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	pool := pgtest.Pool(t, 4)
	if err := dispatcher.DeclareQueue(ctx, pool, "emails", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}

	lost := &postbox.Message{Topic: "sms", Type: "sms.send.v1", Key: "user-7", Payload: []byte(`{"to":"+100"}`),
		Headers: map[string]string{postbox.HeaderCorrelationID: "corr-1"}}
	routed := &postbox.Message{Topic: "emails", Key: "user-7", Payload: []byte(`{"to":"a@b.c"}`)}
	for _, m := range []*postbox.Message{lost, routed} {
		if err := outbox.Send(ctx, pool, m); err != nil {
			t.Fatal(err)
		}
	}
	res := drain(t, ctx, pool)
	if res.Claimed != 2 || res.Delivered != 1 || res.NoRoute != 1 {
		t.Fatalf("drain = %+v, want 2 claimed, 1 delivered, 1 no-route", res)
	}

	var (
		subscriber, topic, typ, key, lastError string
		attempts                               int
		headersJSON                            []byte
		payload                                []byte
		deadAt                                 *time.Time
	)
	err := pool.QueryRow(ctx, `
		SELECT subscriber, topic, type, key, attempts, last_error, headers, payload, dead_at
		FROM postbox.dead_letters WHERE message_id = $1`, lost.ID).
		Scan(&subscriber, &topic, &typ, &key, &attempts, &lastError, &headersJSON, &payload, &deadAt)
	if err != nil {
		t.Fatalf("dead letter for %s: %v", lost.ID, err)
	}
	var headers map[string]string
	if err := json.Unmarshal(headersJSON, &headers); err != nil {
		t.Fatal(err)
	}
	if subscriber != "sms" || topic != "sms" || typ != lost.Type || key != lost.Key || string(payload) != string(lost.Payload) {
		t.Errorf("dead letter = %s/%s/%s/%s %q, want the message as sent to sms", subscriber, topic, typ, key, payload)
	}
	if lastError != "no-route" || attempts != 0 || deadAt == nil {
		t.Errorf("dead letter last_error %q attempts %d dead_at %v, want no-route, 0, set", lastError, attempts, deadAt)
	}
	if headers[postbox.HeaderOriginalError] != "no-route" || headers[postbox.HeaderRetryCount] != "0" ||
		headers[postbox.HeaderMovedToDLQAt] == "" || headers[postbox.HeaderCorrelationID] != "corr-1" {
		t.Errorf("dead letter headers = %v, want x-original-error no-route, x-retry-count 0, x-moved-to-dlq-at, and the original headers", headers)
	}
	if n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.dead_letters`); n != 1 {
		t.Errorf("%d dead letters, want only the no-route one", n)
	}

	// Declared later, the queue gets the message by replay.
	if err := dispatcher.DeclareQueue(ctx, pool, "sms", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	if n := pgtest.Count(t, ctx, pool, `SELECT postbox.replay_dead_letters('sms', error_like => 'no-route')`); n != 1 {
		t.Fatalf("replayed %d, want 1", n)
	}
	// It never reached a stream: the replay puts it back into the outbox,
	// and the relay routes it to the queue declared since.
	if res := drain(t, ctx, pool); res.Delivered != 1 {
		t.Errorf("relay after replay: %+v, want the message delivered", res)
	}
	if d := pgtest.Depths(t, ctx, pool, "sms"); d != (pgtest.Depth{Ready: 1}) {
		t.Errorf("after replay sms has %+v, want the message ready and no dead letter", d)
	}
	if _, err := dlq.Get(ctx, pool, "sms", lost.ID); !errors.Is(err, dlq.ErrNotFound) {
		t.Errorf("dlq.Get after replay: err = %v, want ErrNotFound", err)
	}
	// A consumer of sms now handles it, with the headers it was sent with.
	var got *inbox.Delivery
	c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "sms", NoListen: true,
		Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			got = d
			return nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := c.RunOnce(ctx); err != nil || n != 1 || got == nil {
		t.Fatalf("RunOnce = %d, %v; want the replayed message claimed and handled", n, err)
	}
	if got.ID != lost.ID || string(got.Payload) != string(lost.Payload) || got.Headers[postbox.HeaderCorrelationID] != "corr-1" ||
		got.Headers[postbox.HeaderReplayCount] != "1" {
		t.Errorf("handled %+v, want the lost message, replayed once", got)
	}
	if d := pgtest.Depths(t, ctx, pool, "sms"); d != (pgtest.Depth{}) {
		t.Errorf("after handling sms has %+v, want nothing", d)
	}
}

// An outbox row the relay statement fails on (here a trigger refuses it;
// in life, say, a row written by hand) does not stop the relay: it is
// quarantined as a dead letter of dlq.Relay with the error, the rows around
// it move on, and replaying it once the cause is gone puts it back into the
// outbox, from where it is delivered.
func TestRowTheRelayCannotMoveIsQuarantinedAndReplayed(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 60*time.Second)
	pool := pgtest.Pool(t, 8)
	if err := dispatcher.DeclareQueue(ctx, pool, "work", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `
		CREATE FUNCTION public.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.type = 'poison' THEN RAISE EXCEPTION 'refusing poison %', NEW.message_id; END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER refuse_poison BEFORE INSERT ON postbox.inbox
			FOR EACH ROW EXECUTE FUNCTION public.refuse_poison()`); err != nil {
		t.Fatal(err)
	}
	var msgs []*postbox.Message
	for i := range 5 {
		m := &postbox.Message{Topic: "work", Type: "job.v1", Key: fmt.Sprintf("k%d", i%2), Payload: fmt.Appendf(nil, `{"n":%d}`, i),
			Headers: map[string]string{postbox.HeaderCorrelationID: fmt.Sprint(i)}}
		if i == 2 {
			m.Type = "poison"
		}
		msgs = append(msgs, m)
	}
	if err := outbox.SendBatch(ctx, pool, msgs); err != nil {
		t.Fatal(err)
	}
	poison := msgs[2]

	r, err := relay.New(pool, relay.Config{PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	pgtest.WaitFor(t, ctx, 30*time.Second, "the outbox emptied", func() bool {
		return pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.outbox`) == 0
	})
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if st := r.Stats(); st.Quarantined != 1 || st.Delivered != 4 || st.Claimed != 4 {
		t.Fatalf("relay stats %+v, want 4 moved and delivered, 1 quarantined", st)
	}
	if d := pgtest.Depths(t, ctx, pool, "work"); d != (pgtest.Depth{Ready: 4}) {
		t.Fatalf("work has %+v, want the 4 other messages ready", d)
	}

	letters, err := dlq.List(ctx, pool, dlq.Filter{Subscriber: dlq.Relay})
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 1 {
		t.Fatalf("%s has %d dead letters, want 1: %+v", dlq.Relay, len(letters), letters)
	}
	q := letters[0]
	if q.MessageID != poison.ID || q.Topic != "work" || q.Type != "poison" || q.Key != poison.Key ||
		string(q.Payload) != string(poison.Payload) || !strings.Contains(q.LastError, "refusing poison") ||
		q.Headers[postbox.HeaderCorrelationID] != "2" {
		t.Fatalf("quarantined letter = %+v, want the poison message with the trigger's error", q)
	}

	// Fixed: the row goes back into the outbox and is delivered.
	if _, err := pool.Exec(ctx, `DROP TRIGGER refuse_poison ON postbox.inbox`); err != nil {
		t.Fatal(err)
	}
	if n, err := dlq.Count(ctx, pool, dlq.Filter{Subscriber: dlq.Relay}); err != nil || n != 1 {
		t.Fatalf("Count = %d, %v; want 1", n, err)
	}
	if n, err := dlq.Replay(ctx, pool, dlq.Filter{Subscriber: dlq.Relay}); err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v; want 1", n, err)
	}
	if n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.outbox WHERE message_id = $1 AND is_queue`, poison.ID); n != 1 {
		t.Fatalf("replayed row: %d outbox rows, want 1 queue send", n)
	}
	if res := drain(t, ctx, pool); res.Claimed != 1 || res.Delivered != 1 || res.Quarantined != 0 {
		t.Fatalf("drain after the replay = %+v, want the message delivered", res)
	}
	if d := pgtest.Depths(t, ctx, pool, "work"); d != (pgtest.Depth{Ready: 5}) {
		t.Fatalf("work has %+v, want all 5 ready", d)
	}
	if n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.dead_letters`); n != 0 {
		t.Fatalf("%d dead letters left", n)
	}
}
