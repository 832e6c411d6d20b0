package integration

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/aggregate"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/dlq"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/relay"
	"github.com/postbox-dev/postbox/reqreply"
	"github.com/postbox-dev/postbox/scattergather"
	"github.com/postbox-dev/postbox/stats"
)

// Every public function's input errors follow one convention: a
// *postbox.ValidationError returned as it is, naming the input by its Go
// path, matching postbox.ErrInvalid, with one "postbox: " prefix
// (checkInvalid). Publish, Subscribe and the declarations are walked in
// TestInvalidInputIsRejectedBeforeAnythingIsWritten; this walks the rest.
func TestEveryInputErrorIsAValidationError(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	pool := pgtest.Pool(t, 4)
	h := inbox.HandlerFunc(func(context.Context, pgx.Tx, *inbox.Delivery) error { return nil })
	bh := inbox.BatchHandlerFunc(func(context.Context, pgx.Tx, []*inbox.Delivery) error { return nil })
	consumer := func(c inbox.Config) func() error {
		return func() error {
			if c.Subscriber == "" {
				c.Subscriber = "billing"
			}
			_, err := inbox.NewConsumer(pool, c)
			return err
		}
	}
	relayWith := func(c relay.Config) func() error {
		return func() error { _, err := relay.New(pool, c); return err }
	}
	declare := func(o dispatcher.Options) func() error {
		return func() error { return dispatcher.DeclareQueue(ctx, pool, "billing", o) }
	}
	ignore := func(_ any, err error) error { return err }

	cases := []struct {
		name  string
		field string
		call  func() error
	}{
		{"relay without a pool", "pool", func() error { _, err := relay.New(nil, relay.Config{}); return err }},
		{"relay batch size", "Config.BatchSize", relayWith(relay.Config{BatchSize: relay.MaxBatchSize + 1})},
		{"relay batch bytes", "Config.MaxBatchBytes", relayWith(relay.Config{MaxBatchBytes: -1})},
		{"relay poll interval", "Config.PollInterval", relayWith(relay.Config{PollInterval: -time.Second})},
		{"relay max poll interval", "Config.MaxPollInterval", relayWith(relay.Config{PollInterval: time.Minute, MaxPollInterval: time.Second})},
		{"relay sink timeout", "Config.SinkTimeout", relayWith(relay.Config{SinkTimeout: -time.Second})},

		{"consumer without a pool", "pool", func() error { _, err := inbox.NewConsumer(nil, inbox.Config{Subscriber: "s", Handler: h}); return err }},
		{"consumer subscriber", "Config.Subscriber", consumer(inbox.Config{Subscriber: "Billing", Handler: h})},
		{"consumer without a handler", "Config.Handler", consumer(inbox.Config{})},
		{"consumer with both handlers", "Config.BatchHandler", consumer(inbox.Config{Handler: h, BatchHandler: bh})},
		{"consumer batch size", "Config.BatchSize", consumer(inbox.Config{Handler: h, BatchSize: -1})},
		{"consumer batch budget", "Config.BatchBudget", consumer(inbox.Config{Handler: h, BatchBudget: -time.Second})},
		{"consumer concurrency", "Config.Concurrency", consumer(inbox.Config{Handler: h, Concurrency: -1})},
		{"consumer poll interval", "Config.PollInterval", consumer(inbox.Config{Handler: h, PollInterval: -time.Second})},
		{"consumer max poll interval", "Config.MaxPollInterval", consumer(inbox.Config{Handler: h, PollInterval: time.Minute, MaxPollInterval: time.Second})},
		{"consumer handler timeout", "Config.HandlerTimeout", consumer(inbox.Config{Handler: h, HandlerTimeout: -time.Second})},

		{"janitor without a pool", "pool", func() error { _, err := inbox.NewJanitor(nil, inbox.JanitorConfig{}); return err }},
		{"janitor interval", "JanitorConfig.Interval", func() error {
			_, err := inbox.NewJanitor(pool, inbox.JanitorConfig{Interval: -time.Second})
			return err
		}},
		{"janitor batch size", "JanitorConfig.BatchSize", func() error {
			_, err := inbox.NewJanitor(pool, inbox.JanitorConfig{BatchSize: -1})
			return err
		}},
		{"handle once subscriber", "subscriber", func() error {
			return ignore(inbox.HandleOnce(ctx, pool, "", &postbox.Message{ID: postbox.NewID()}, h))
		}},
		{"handle once without a message", "msg", func() error { return ignore(inbox.HandleOnce(ctx, pool, "s", nil, h)) }},
		{"handle once without an ID", "Message.ID", func() error { return ignore(inbox.HandleOnce(ctx, pool, "s", &postbox.Message{}, h)) }},
		{"handle once without a handler", "h", func() error {
			return ignore(inbox.HandleOnce(ctx, pool, "s", &postbox.Message{ID: postbox.NewID()}, nil))
		}},

		{"max attempts", "Options.MaxAttempts", declare(dispatcher.Options{MaxAttempts: -1})},
		{"negative retention", "Options.DedupWindow", declare(dispatcher.Options{DedupWindow: -time.Hour})},
		{"backoff", "Options.Backoff", declare(dispatcher.Options{Backoff: dispatcher.Backoff{Initial: time.Hour, Max: time.Second}})},
		{"key on dead", "Options.KeyOnDead", declare(dispatcher.Options{KeyOnDead: "wait"})},
		{"unsubscribe subscriber", "subscriber", func() error { return dispatcher.Unsubscribe(ctx, pool, "A", "t") }},
		{"unsubscribe topic", "topic", func() error { return dispatcher.Unsubscribe(ctx, pool, "a", "t..u") }},
		{"drop subscriber", "name", func() error { return dispatcher.DropSubscriber(ctx, pool, "") }},
		{"get subscriber", "name", func() error { return ignore(dispatcher.GetSubscriber(ctx, pool, "A B")) }},
		{"pattern", "pattern", func() error { return ignore(dispatcher.PatternRegexp("a.**")) }},
		{"route router", "Route.Router", func() error {
			return ignore(dispatcher.AddRoute(ctx, pool, dispatcher.Route{Router: "R", Queue: "q"}))
		}},
		{"route predicate", "Route.Predicate", func() error {
			return ignore(dispatcher.AddRoute(ctx, pool, dispatcher.Route{Router: "r", Queue: "q", Predicate: "$.a ? ("}))
		}},
		{"routes router", "router", func() error { return ignore(dispatcher.Routes(ctx, pool, "R")) }},
		{"remove route position", "position", func() error { return dispatcher.RemoveRoute(ctx, pool, "r", 0) }},
		{"reroute router", "router", func() error { return ignore(dispatcher.Reroute(ctx, pool, "")) }},

		{"dlq list limit", "Filter.Limit", func() error { return ignore(dlq.List(ctx, pool, dlq.Filter{Limit: -1})) }},
		{"dlq replay subscriber", "Filter.Subscriber", func() error { return ignore(dlq.Replay(ctx, pool, dlq.Filter{})) }},
		{"dlq purge since", "Filter.Since", func() error {
			return ignore(dlq.Purge(ctx, pool, dlq.Filter{Subscriber: "s", Since: time.Now(), Until: time.Now().Add(-time.Hour)}))
		}},
		{"dlq count type", "Filter.Type", func() error { return ignore(dlq.Count(ctx, pool, dlq.Filter{Subscriber: "s", Type: "\x00"})) }},
		{"dlq count purge error", "Filter.ErrorContains", func() error {
			return ignore(dlq.CountPurge(ctx, pool, dlq.Filter{Subscriber: "s", ErrorContains: "\xff"}))
		}},
		{"dlq get subscriber", "subscriber", func() error { return ignore(dlq.Get(ctx, pool, "S", uuid.New())) }},

		{"stats cap", "Options.Cap", func() error { return ignore(stats.Options{Cap: -1}.Read(ctx, pool)) }},
		{"stats rate window", "Options.RateWindow", func() error { return ignore(stats.Options{RateWindow: -1}.Subscribers(ctx, pool)) }},
		{"blocked keys limit", "limit", func() error { return ignore(stats.BlockedKeys(ctx, pool, "s", stats.MaxBlockedKeys+1)) }},

		{"requester without a pool", "pool", func() error { return ignore(reqreply.NewRequester(nil, reqreply.Config{Name: "a"})) }},
		{"requester name", "Config.Name", func() error { return ignore(reqreply.NewRequester(pool, reqreply.Config{Name: "A"})) }},
		{"reply without a delivery", "d", func() error { return reqreply.Reply(ctx, pool, nil, &postbox.Message{}) }},
		{"aggregator name", "Config.Name", func() error { return ignore(aggregate.New(aggregate.Config{Name: "A"})) }},
		{"aggregator without Build", "Config.Build", func() error { return ignore(aggregate.New(aggregate.Config{Name: "a", Count: 2})) }},
		{"scatter-gather timeout", "Config.Timeout", func() error {
			return ignore(scattergather.New(scattergather.Config{Name: "a", Timeout: -time.Second}))
		}},

		{"validate name", "field", func() error { return postbox.ValidateName("field", "a b") }},
		{"limits", "Message.Payload", func() error {
			return postbox.Limits{MaxPayloadBytes: 1}.Validate(&postbox.Message{Payload: []byte("ab")})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { checkInvalid(t, c.name, c.call(), c.field) })
	}
	if n := written(t, pool); n != "0/0/0" {
		t.Fatalf("outbox/subscriptions/subscribers rows = %s after the rejected calls, want 0/0/0", n)
	}
}
