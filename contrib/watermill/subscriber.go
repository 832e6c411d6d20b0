package watermill

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/relay"
)

// SubscriberConfig configures a Subscriber. Zero values mean the defaults,
// except ConsumerGroup, which is required.
type SubscriberConfig struct {
	// ConsumerGroup names the group of subscribers that share a topic's
	// messages: each message of the topic goes to one subscriber of each
	// group. Every Subscriber with the same ConsumerGroup, in any process,
	// is in the same group. Required: a default shared by unrelated
	// services would have them silently take each other's messages.
	ConsumerGroup string
	// Options are the retry settings (MaxAttempts, Backoff), partitions
	// and dedup window of the group's postbox subscriber for each topic,
	// declared on every Subscribe and SubscribeInitialize: the last
	// process to subscribe sets them. Default: dispatcher's defaults (10
	// attempts, backoff from 1s doubling to 5m).
	Options dispatcher.Options
	// AckTimeout bounds how long one message may wait for the reader of
	// the channel and then for its Ack or Nack; past it, the attempt has
	// failed (it counts, with backoff). Default 30s. The message's
	// transaction stays open meanwhile, so keep it short.
	AckTimeout time.Duration
	// Concurrency is how many messages of one Subscribe may be awaiting
	// their Ack at once, each in its own transaction on its own pool
	// connection. Default 1: messages come one at a time, which suits a
	// reader that handles them in turn; raise it for a Watermill router,
	// which handles messages concurrently. With more than one, messages
	// with different keys may be acked in any order.
	Concurrency int
	// BatchSize is the most deliveries one transaction claims; acked ones
	// commit together when the batch ends. Default 1: each message commits
	// on its own, right after its Ack. Larger batches commit several Acks
	// at once, which is faster, but the inbox runs a batch optimistically
	// and, when one of its deliveries fails, runs the others again: a
	// message acked before a Nack in the same batch is then delivered a
	// second time (its effects through the transaction still happen once).
	BatchSize int
	// PollInterval, NoListen: as in inbox.Config. The relay's wake-ups
	// take one extra connection per Subscribe (LISTEN); with NoListen,
	// consumers poll every PollInterval (default 100ms) instead.
	PollInterval time.Duration
	NoListen     bool
	// RunRelay runs a relay (relay.New with relay.Config{}) over the
	// Subscriber's pool while it is open, so the process needs nothing
	// else to move messages from the outbox to the inbox. Leave it off
	// when relays run elsewhere (`postbox relay`, or relay.Run in one
	// place of the service); several relays are safe, but one per
	// Subscriber is wasteful.
	RunRelay bool
	// Logger receives the consumers' and the relay's events. Default:
	// silent.
	Logger *slog.Logger
}

// DefaultAckTimeout is SubscriberConfig.AckTimeout's default.
const DefaultAckTimeout = 30 * time.Second

// ErrSubscriberClosed is returned by Subscribe after Close.
var ErrSubscriberClosed = errors.New("watermill: subscriber closed")

// ErrNacked is the error recorded for a message its reader nacked.
var ErrNacked = errors.New("watermill: message nacked")

// errReleased is recorded for a message in flight when its subscription
// ended before the message was acked or nacked.
var errReleased = errors.New("watermill: subscription closed before the message was acked")

// Subscriber is a Watermill message.Subscriber over a postbox inbox. Each
// Subscribe runs an inbox consumer of the consumer group's postbox
// subscriber for that topic (SubscriberName). A message's context carries
// its delivery's transaction (TxFromContext): Ack makes the handler's
// writes through it commit together with the mark that the message is
// handled; Nack rolls them back and counts a failed attempt, retried with
// the group's backoff and dead-lettered (package dlq) after its
// MaxAttempts.
type Subscriber struct {
	pool *pgxpool.Pool
	cfg  SubscriberConfig

	mu      sync.Mutex
	closed  bool
	closing chan struct{}
	wg      sync.WaitGroup
	relayOn bool
}

var (
	_ message.Subscriber           = (*Subscriber)(nil)
	_ message.SubscribeInitializer = (*Subscriber)(nil)
)

// NewSubscriber returns a subscriber of cfg.ConsumerGroup over pool. Give
// the pool more connections than the Concurrency of all its open
// subscriptions together: each message awaiting its Ack holds one.
func NewSubscriber(pool *pgxpool.Pool, cfg SubscriberConfig) (*Subscriber, error) {
	if pool == nil {
		return nil, errors.New("watermill: nil pool")
	}
	if cfg.ConsumerGroup == "" {
		return nil, &postbox.ValidationError{Field: "SubscriberConfig.ConsumerGroup", Reason: "empty; name the consumer group"}
	}
	if _, err := SubscriberName(cfg.ConsumerGroup, "t"); err != nil {
		return nil, err
	}
	if cfg.AckTimeout == 0 {
		cfg.AckTimeout = DefaultAckTimeout
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 1
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AckTimeout < 0 {
		return nil, &postbox.ValidationError{Field: "SubscriberConfig.AckTimeout", Reason: "negative"}
	}
	// The consumer's own checks, at construction rather than at Subscribe.
	if _, err := inbox.NewConsumer(pool, consumerConfig(cfg, "check", nil)); err != nil {
		return nil, err
	}
	return &Subscriber{pool: pool, cfg: cfg, closing: make(chan struct{})}, nil
}

func consumerConfig(cfg SubscriberConfig, subscriber string, h inbox.Handler) inbox.Config {
	if h == nil {
		h = inbox.HandlerFunc(func(context.Context, pgx.Tx, *inbox.Delivery) error { return nil })
	}
	return inbox.Config{
		Subscriber:     subscriber,
		Handler:        h,
		BatchSize:      cfg.BatchSize,
		Concurrency:    cfg.Concurrency,
		PollInterval:   cfg.PollInterval,
		HandlerTimeout: cfg.AckTimeout,
		NoListen:       cfg.NoListen,
		Logger:         cfg.Logger,
	}
}

// SubscribeInitialize declares the consumer group's postbox subscriber for
// topic and subscribes it to the topic, without consuming. Messages
// published to a topic before any group subscribed to it reach no group
// (postbox routes at relay time), so call this (or Subscribe) before the
// first publish.
func (s *Subscriber) SubscribeInitialize(topic string) error {
	_, _, err := s.declare(context.Background(), topic)
	return err
}

func (s *Subscriber) declare(ctx context.Context, topic string) (pbTopic, subscriber string, err error) {
	pbTopic, err = TopicName(topic)
	if err != nil {
		return "", "", fmt.Errorf("watermill: subscribe: %w", err)
	}
	subscriber, err = SubscriberName(s.cfg.ConsumerGroup, topic)
	if err != nil {
		return "", "", fmt.Errorf("watermill: subscribe: %w", err)
	}
	// A connection of its own: the pool's may all be held by subscriptions
	// whose messages wait for readers that will read only once this
	// Subscribe has returned (Watermill's multiplier does just that).
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return "", "", fmt.Errorf("watermill: subscribe: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if err := dispatcher.DeclareSubscriber(ctx, tx, subscriber, s.cfg.Options); err != nil {
			return err
		}
		return dispatcher.Subscribe(ctx, tx, dispatcher.Subscription{Subscriber: subscriber, Topic: pbTopic})
	})
	if err != nil {
		return "", "", fmt.Errorf("watermill: subscribe %q to %q: %w", subscriber, pbTopic, err)
	}
	return pbTopic, subscriber, nil
}

// Subscribe declares and subscribes the consumer group to topic (as
// SubscribeInitialize does) and returns the channel of its messages. The
// channel is closed when ctx ends or the Subscriber is closed, after the
// messages in flight have been settled: acked ones commit, the others are
// released for another attempt.
//
// Read each message and Ack or Nack it within AckTimeout. Until then its
// context carries its delivery's transaction (TxFromContext) and its
// delivery (DeliveryFromContext); it is cancelled at the Ack or Nack, and
// when the subscription ends.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrSubscriberClosed
	}
	s.wg.Add(1) // before Close can wait
	s.mu.Unlock()
	started := false
	defer func() {
		if !started {
			s.wg.Done()
		}
	}()

	_, name, err := s.declare(ctx, topic)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	sub := &subscription{out: make(chan *message.Message), done: runCtx.Done()}
	c, err := inbox.NewConsumer(s.pool, consumerConfig(s.cfg, name, sub))
	if err != nil {
		cancel()
		return nil, err
	}
	if s.cfg.RunRelay {
		s.startRelay()
	}
	started = true
	go func() {
		defer s.wg.Done()
		defer close(sub.out)
		defer cancel()
		go func() {
			select {
			case <-s.closing:
				cancel()
			case <-runCtx.Done():
			}
		}()
		if err := c.Run(runCtx); err != nil {
			s.cfg.Logger.Error("watermill: consumer stopped", "subscriber", name, "err", err)
		}
	}()
	return sub.out, nil
}

// startRelay starts the in-process relay once, for the Subscriber's life.
func (s *Subscriber) startRelay() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.relayOn || s.closed {
		return
	}
	r, err := relay.New(s.pool, relay.Config{Logger: s.cfg.Logger})
	if err != nil {
		s.cfg.Logger.Error("watermill: relay", "err", err)
		return
	}
	s.relayOn = true
	ctx, cancel := context.WithCancel(context.Background())
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		go func() { <-s.closing; cancel() }()
		_ = r.Run(ctx)
	}()
}

// Close ends every subscription and waits until their channels are
// closed. It does not close the pool, which belongs to the caller.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// subscription is the inbox handler of one Subscribe: it hands each
// delivery to the channel as a Watermill message and waits for its Ack.
type subscription struct {
	out  chan *message.Message
	done <-chan struct{} // the subscription is ending
}

func (s *subscription) Handle(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	msg, err := toWatermill(d)
	if err != nil {
		return postbox.Permanent(err)
	}
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g := &txGuard{}
	defer g.finish() // no statement of the handler is left running when the consumer moves on
	mctx = WithTx(mctx, guardedTx{tx: tx, g: g})
	mctx = context.WithValue(mctx, deliveryKey{}, d)
	msg.SetContext(mctx)
	select {
	case s.out <- msg:
	case <-s.done:
		return errReleased
	case <-ctx.Done():
		return fmt.Errorf("watermill: message not read within the ack timeout: %w", ctx.Err())
	}
	var ended error
	select {
	case <-msg.Acked():
		return nil
	case <-msg.Nacked():
		return ErrNacked
	case <-s.done:
		ended = errReleased
	case <-ctx.Done():
		ended = fmt.Errorf("watermill: message not acked within the ack timeout: %w", ctx.Err())
	}
	// An Ack or Nack that came at the same moment still counts.
	select {
	case <-msg.Acked():
		return nil
	case <-msg.Nacked():
		return ErrNacked
	default:
		return ended
	}
}
