package scattergather

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/aggregate"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/invalid"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/reqreply"
)

// Config configures a ScatterGather. Zero values mean the defaults.
type Config struct {
	// Name names the scatter-gather: its aggregator (package aggregate)
	// has this name, and its reply queue defaults to Name + ".replies".
	// Required; it must match postbox.NamePattern.
	Name string
	// ReplyQueue is the queue recipients reply to (the requests' reply-to).
	// Declare declares it; run a consumer of it with the ScatterGather as
	// its handler, in as many processes as you like: the gathering state
	// is in PostgreSQL, not in any of them.
	ReplyQueue string
	// Timeout is how long a gather waits for its replies after Scatter;
	// then Sweep completes it with what arrived. Default 30s.
	Timeout time.Duration
	// Build makes the gathered result from the replies (Aggregate.Parts,
	// one per replier, sorted by the replier's subscriber name;
	// Aggregate.TimedOut when not all came), or returns nil for no result.
	// Required.
	Build func(a *aggregate.Aggregate) (*postbox.Message, error)
	// Deliver writes the result through the transaction that completes the
	// gather. Default outbox.Publish.
	Deliver func(ctx context.Context, db postbox.DBTX, msg *postbox.Message) error
	// Late handles a reply that comes after its gather completed. Nil: it
	// is counted and dropped (see aggregate.Config.Late).
	Late inbox.Handler
	// Retention and SweepInterval are those of the aggregator.
	Retention, SweepInterval time.Duration
	// Logger receives Run's failures. Default: silent.
	Logger *slog.Logger
}

// DefaultTimeout is Config.Timeout's default.
const DefaultTimeout = 30 * time.Second

// ScatterGather sends one request to several recipients and gathers their
// replies into one result. It is the inbox.Handler of its reply queue.
type ScatterGather struct {
	cfg Config
	agg *aggregate.Aggregator
}

// New returns a ScatterGather. It touches no database.
func New(cfg Config) (*ScatterGather, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Timeout < 0 {
		return nil, invalid.Errorf("Config.Timeout", "negative")
	}
	if err := postbox.ValidateName("Config.Name", cfg.Name); err != nil {
		return nil, err
	}
	if cfg.ReplyQueue == "" {
		cfg.ReplyQueue = cfg.Name + ".replies"
	}
	if err := postbox.ValidateName("Config.ReplyQueue", cfg.ReplyQueue); err != nil {
		return nil, err
	}
	agg, err := aggregate.New(aggregate.Config{
		Name:          cfg.Name,
		PartID:        replier,
		Timeout:       cfg.Timeout,
		Build:         cfg.Build,
		Deliver:       cfg.Deliver,
		Late:          cfg.Late,
		Retention:     cfg.Retention,
		SweepInterval: cfg.SweepInterval,
		Logger:        cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	return &ScatterGather{cfg: cfg, agg: agg}, nil
}

// replier is a reply's part ID: the subscriber that sent it (Reply's
// x-replier header), so each recipient counts once however often it
// replies; else the reply's ID.
func replier(d *inbox.Delivery) string {
	if r := d.Headers[reqreply.HeaderReplier]; r != "" {
		return r
	}
	return d.ID.String()
}

// ReplyQueue is the queue recipients reply to.
func (s *ScatterGather) ReplyQueue() string { return s.cfg.ReplyQueue }

// Aggregator is the aggregator that gathers the replies.
func (s *ScatterGather) Aggregator() *aggregate.Aggregator { return s.agg }

// Declare declares the reply queue with opts.
func (s *ScatterGather) Declare(ctx context.Context, db postbox.DBTX, opts dispatcher.Options) error {
	return dispatcher.DeclareQueue(ctx, db, s.cfg.ReplyQueue, opts)
}

// Recipients says where a request goes: a copy to each of Queues, or one
// message to Topic, whose subscribers are the recipients.
type Recipients struct {
	Queues []string
	Topic  string
	// Expect is how many replies complete a gather of a topic's recipients
	// (postbox cannot know in Go how many subscriptions will match). 0:
	// the gather completes at its timeout. For Queues it is len(Queues).
	Expect int
}

// requestNamespace derives the IDs of the copies of a request (UUIDv5).
var requestNamespace = uuid.MustParse("4c1d8f2a-9b3e-4f7a-8d6c-1e2f3a4b5c6d")

// Scatter sends req to the recipients through tx, normally the caller's
// business transaction, and opens the gather of their replies in the same
// transaction: the requests go out and the gather begins together, or not
// at all. It returns the gather's key: req's correlation-id if it has one,
// else its ID (filled in if empty).
//
// Each copy carries reply-to (the ReplyQueue) and correlation-id (the
// key), and is keyed by the key unless req.Key is set, so that the replies
// of one gather reach the reply queue's consumer one at a time. A copy sent
// to a queue gets an ID derived from req's and the queue's, so scattering
// the same req again sends nothing new. Recipients answer with
// reqreply.Reply; the gather completes with all replies (Expect of them
// for a topic) or at its timeout, with what came.
func (s *ScatterGather) Scatter(ctx context.Context, tx postbox.DBTX, req *postbox.Message, to Recipients) (string, error) {
	if req == nil {
		return "", invalid.Nil("req")
	}
	if err := to.check(); err != nil {
		return "", err
	}
	if req.ID == uuid.Nil {
		req.ID = postbox.NewID()
	}
	key := req.Headers[postbox.HeaderCorrelationID]
	if key == "" {
		key = req.ID.String()
	}
	h := make(map[string]string, len(req.Headers)+2)
	maps.Copy(h, req.Headers)
	h[postbox.HeaderReplyTo] = s.cfg.ReplyQueue
	h[postbox.HeaderCorrelationID] = key
	req.Headers = h
	if req.Key == "" {
		req.Key = key
	}
	expect := to.Expect
	if to.Topic != "" {
		msg := *req
		msg.Topic = to.Topic
		if err := outbox.Publish(ctx, tx, &msg); err != nil {
			return "", err
		}
	} else {
		expect = len(to.Queues)
		msgs := make([]*postbox.Message, len(to.Queues))
		for i, q := range to.Queues {
			m := *req
			m.Topic = q
			m.ID = uuid.NewSHA1(requestNamespace, append(req.ID[:], q...))
			msgs[i] = &m
		}
		if err := outbox.SendBatch(ctx, tx, msgs); err != nil {
			return "", err
		}
	}
	if err := s.agg.Open(ctx, tx, key, aggregate.OpenOptions{Expected: expect}); err != nil {
		return "", err
	}
	return key, nil
}

func (r Recipients) check() error {
	switch {
	case r.Topic != "" && len(r.Queues) > 0:
		return invalid.Errorf("Recipients", "both a topic and queues: give one")
	case r.Topic == "" && len(r.Queues) == 0:
		return invalid.Errorf("Recipients", "none: give a topic or queues")
	case r.Expect < 0:
		return invalid.Errorf("Recipients.Expect", "negative")
	case len(r.Queues) > 0 && r.Expect != 0 && r.Expect != len(r.Queues):
		return invalid.Errorf("Recipients.Expect", "set for queues: it is len(Queues)")
	}
	if r.Topic != "" {
		return postbox.ValidateName("Recipients.Topic", r.Topic)
	}
	seen := map[string]bool{}
	for i, q := range r.Queues {
		field := fmt.Sprintf("Recipients.Queues[%d]", i)
		if err := postbox.ValidateName(field, q); err != nil {
			return err
		}
		if seen[q] {
			return invalid.Errorf(field, "%q twice", q)
		}
		seen[q] = true
	}
	return nil
}

// Handle gathers a reply (the reply queue's handler): see
// aggregate.Aggregator.Handle.
func (s *ScatterGather) Handle(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	return s.agg.Handle(ctx, tx, d)
}

// Sweep completes the gathers whose timeout has passed, with the replies
// that came; Run calls it every SweepInterval. See aggregate.Aggregator.Sweep.
func (s *ScatterGather) Sweep(ctx context.Context, beginner inbox.TxBeginner) (int, error) {
	return s.agg.Sweep(ctx, beginner)
}

// Run sweeps until ctx ends; see aggregate.Aggregator.Run.
func (s *ScatterGather) Run(ctx context.Context, beginner inbox.TxBeginner) error {
	return s.agg.Run(ctx, beginner)
}

// State returns the bookkeeping of the gather of key.
func (s *ScatterGather) State(ctx context.Context, db postbox.DBTX, key string) (aggregate.State, error) {
	return s.agg.State(ctx, db, key)
}
