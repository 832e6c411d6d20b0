package integration

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
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
	if n := count(t, ctx, pool, `SELECT count(*) FROM postbox.dead_letters`); n != 1 {
		t.Errorf("%d dead letters, want only the no-route one", n)
	}

	// Declared later, the queue gets the message by replay.
	if err := dispatcher.DeclareQueue(ctx, pool, "sms", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, ctx, pool, `SELECT postbox.replay_dead_letters('sms', error_like => 'no-route')`); n != 1 {
		t.Fatalf("replayed %d, want 1", n)
	}
	if n := count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox WHERE subscriber = 'sms' AND message_id = $1 AND status = 'pending'`, lost.ID); n != 1 {
		t.Errorf("after replay the message has %d pending rows for sms, want 1", n)
	}
}
