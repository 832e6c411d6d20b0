package relay_test

import (
	"context"
	"testing"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

func TestRelayMovesQueueAndTopicMessages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)

	if err := dispatcher.DeclareQueue(ctx, pool, "process-order", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "inventory", Topic: "order.created"}); err != nil {
		t.Fatal(err)
	}
	if err := outbox.Send(ctx, pool, &postbox.Message{Topic: "process-order", Key: "o-1", Payload: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if err := outbox.Publish(ctx, pool, &postbox.Message{Topic: "order.created", Key: "o-1", Payload: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Drain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Claimed != 2 || res.Delivered != 2 {
		t.Fatalf("drain = %+v, want 2 claimed and 2 delivered", res)
	}
}
