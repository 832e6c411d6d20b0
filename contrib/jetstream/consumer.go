package jetstream

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
)

// ConsumerConfig configures a Consumer. Zero values mean the defaults.
type ConsumerConfig struct {
	// Subscriber names the consumer group whose handled message IDs
	// inbox.HandleOnce records (postbox's dedup table). Required; it need
	// not be declared with package dispatcher.
	Subscriber string
	// Handler handles each message. What it writes through its tx commits
	// together with the "handled" mark, exactly once per message ID.
	Handler inbox.Handler
	// Concurrency is how many messages are handled at once, each in its
	// own transaction. Messages of one key always go to the same worker,
	// so a key's messages are handled one at a time, in stream order.
	// Default 4.
	Concurrency int
	// HandlerTimeout bounds one handler call through its context.
	// Default 30s. A handler in flight when Run's context ends still
	// finishes, within this bound.
	HandlerTimeout time.Duration
	// Backoff is the delay before a failed message is redelivered
	// (NakWithDelay), by delivery count: exponential with jitter.
	// Default dispatcher.DefaultBackoff (1s, doubling, up to 5m).
	Backoff dispatcher.Backoff
	// Logger receives failures and lifecycle events. Default: silent.
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultConcurrency    = 4
	DefaultHandlerTimeout = 30 * time.Second
	maxConcurrency        = 1024
	// prefetch is how many messages the pull subscription keeps buffered
	// per worker; a buffered message's AckWait is already running.
	prefetch = 64
	// workerQueue is how many messages wait for each worker.
	workerQueue = 8
	// holdMargin is added to the delay of a message held behind its key's
	// failed message when it goes back to the server, so that it comes
	// back after that message.
	holdMargin = time.Second
)

func (c ConsumerConfig) withDefaults() (ConsumerConfig, error) {
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.HandlerTimeout == 0 {
		c.HandlerTimeout = DefaultHandlerTimeout
	}
	if c.Backoff.Initial == 0 {
		c.Backoff.Initial = dispatcher.DefaultBackoff.Initial
	}
	if c.Backoff.Max == 0 {
		c.Backoff.Max = max(dispatcher.DefaultBackoff.Max, c.Backoff.Initial)
	}
	if c.Backoff.Multiplier == 0 {
		c.Backoff.Multiplier = dispatcher.DefaultBackoff.Multiplier
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if err := postbox.ValidateName("ConsumerConfig.Subscriber", c.Subscriber); err != nil {
		return c, err
	}
	switch {
	case c.Handler == nil:
		return c, errors.New("jetstream: ConsumerConfig.Handler is nil")
	case c.Concurrency < 1 || c.Concurrency > maxConcurrency:
		return c, fmt.Errorf("jetstream: ConsumerConfig.Concurrency %d: want 1 to %d", c.Concurrency, maxConcurrency)
	case c.HandlerTimeout < 0:
		return c, fmt.Errorf("jetstream: ConsumerConfig.HandlerTimeout %s: negative", c.HandlerTimeout)
	case c.Backoff.Initial < 0 || c.Backoff.Max < c.Backoff.Initial:
		return c, errors.New("jetstream: ConsumerConfig.Backoff: want 0 <= Initial <= Max")
	case c.Backoff.Multiplier < 1:
		return c, errors.New("jetstream: ConsumerConfig.Backoff.Multiplier: less than 1")
	}
	return c, nil
}

// ConsumerStats are a Consumer's counters since it was created.
type ConsumerStats struct {
	Handled    int64 // messages whose handler's transaction committed
	Duplicates int64 // messages already handled (same ID): acked, handler not run
	Retried    int64 // failed attempts, negatively acknowledged for a later redelivery
	Terminated int64 // messages given up on: permanent errors, no message ID, MaxDeliver reached
}

// Consumer hands the messages of a JetStream pull consumer to an
// inbox.Handler through inbox.HandleOnce, and acknowledges each only after
// the transaction that ran the handler and marked the message ID handled
// has committed.
type Consumer struct {
	db   inbox.TxBeginner
	cons natsjs.Consumer
	cfg  ConsumerConfig
	// From the JetStream consumer's configuration.
	ackWait    time.Duration
	maxDeliver int

	handled, duplicates, retried, terminated atomic.Int64
}

// NewConsumer returns a Consumer of cons that handles messages with
// cfg.Handler in transactions begun on db (a *pgxpool.Pool, normally).
// cons must acknowledge explicitly (AckExplicitPolicy).
//
// Per-key order holds for messages one Consumer handles. Several Consumers
// on one JetStream consumer share its messages and still handle each
// message's effects once, but two of them may handle one key at the same
// time; for per-key order, give a JetStream consumer one Consumer.
func NewConsumer(db inbox.TxBeginner, cons natsjs.Consumer, cfg ConsumerConfig) (*Consumer, error) {
	if db == nil {
		return nil, errors.New("jetstream: nil database")
	}
	if cons == nil {
		return nil, errors.New("jetstream: nil JetStream consumer")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	info := cons.CachedInfo()
	if info == nil {
		return nil, errors.New("jetstream: the JetStream consumer has no info")
	}
	if info.Config.AckPolicy != natsjs.AckExplicitPolicy {
		return nil, fmt.Errorf("jetstream: consumer %q acks %s: want AckExplicitPolicy, so that a message is acknowledged only after its handler committed", info.Name, info.Config.AckPolicy)
	}
	ackWait := info.Config.AckWait
	if ackWait <= 0 {
		ackWait = 30 * time.Second // the server's default
	}
	return &Consumer{db: db, cons: cons, cfg: cfg, ackWait: ackWait, maxDeliver: info.Config.MaxDeliver}, nil
}

// Stats returns the consumer's counters.
func (c *Consumer) Stats() ConsumerStats {
	return ConsumerStats{
		Handled:    c.handled.Load(),
		Duplicates: c.duplicates.Load(),
		Retried:    c.retried.Load(),
		Terminated: c.terminated.Load(),
	}
}

// Run handles messages until ctx ends. It then stops fetching, handles the
// messages already fetched (at most a few hundred), gives back those held
// behind a failed message of their key (NakWithDelay, due after it), and
// returns nil. It returns an error if the subscription cannot start or
// ends while ctx is still alive (the consumer was deleted, the connection
// closed).
//
// Handling what was fetched rather than giving it back keeps order across
// a restart: the server may serve the next Consumer's first pull before it
// has processed a Nak sent just before, so a message given back could be
// redelivered after a later message of its key.
func (c *Consumer) Run(ctx context.Context) error {
	log := c.cfg.Logger.With("subscriber", c.cfg.Subscriber)
	it, err := c.cons.Messages(natsjs.PullMaxMessages(prefetch * c.cfg.Concurrency))
	if err != nil {
		return fmt.Errorf("jetstream: subscribe: %w", err)
	}
	defer it.Stop()
	log.Info("jetstream consumer started", "concurrency", c.cfg.Concurrency)
	defer log.Info("jetstream consumer stopped")

	workers := make([]*worker, c.cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range workers {
		workers[i] = &worker{c: c, log: log, in: make(chan natsjs.Msg, workerQueue), held: make(map[string]*hold)}
		wg.Go(workers[i].run)
	}
	seed := maphash.MakeSeed()
	var keyless uint64
	dispatch := func(msg natsjs.Msg) {
		// A key always goes to the same worker; messages without one
		// take turns.
		var n uint64
		if k := msg.Headers().Get(HeaderKey); k != "" {
			n = maphash.String(seed, k)
		} else {
			keyless++
			n = keyless
		}
		workers[n%uint64(len(workers))].in <- msg
	}
	var runErr error
	for {
		msg, err := it.Next(natsjs.NextContext(ctx))
		if msg != nil {
			dispatch(msg)
		}
		if ctx.Err() != nil {
			break
		}
		if errors.Is(err, natsjs.ErrMsgIteratorClosed) {
			runErr = fmt.Errorf("jetstream: subscription ended: %w", err)
			break
		}
		if err != nil {
			log.Warn("jetstream consumer: next message", "err", err)
		}
	}
	// Stop pulling, and handle what is buffered.
	it.Drain()
	for {
		msg, err := it.Next(natsjs.NextMaxWait(time.Second))
		if err != nil {
			break
		}
		dispatch(msg)
	}
	for _, w := range workers {
		close(w.in)
	}
	wg.Wait()
	return runErr
}

// worker handles the messages of its keys one at a time.
type worker struct {
	c    *Consumer
	log  *slog.Logger
	in   chan natsjs.Msg
	held map[string]*hold
}

// hold keeps a key's later messages back while its failed message waits
// for redelivery. The server would otherwise hand them out meanwhile, out
// of order.
type hold struct {
	seq     uint64       // stream sequence of the failed message
	due     time.Time    // when its redelivery is due
	waiting []natsjs.Msg // later messages of the key, in stream order
}

func (w *worker) run() {
	// Held messages are kept alive (InProgress) well within AckWait.
	tick := time.NewTicker(max(w.c.ackWait/3, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case msg, ok := <-w.in:
			if !ok {
				w.releaseHolds()
				return
			}
			w.accept(msg)
		case <-tick.C:
			w.tend()
		}
	}
}

func (w *worker) accept(msg natsjs.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		w.log.Error("jetstream consumer: not a JetStream message", "subject", msg.Subject(), "err", err)
		return
	}
	key := msg.Headers().Get(HeaderKey)
	h, held := w.held[key]
	switch {
	case key == "" || !held:
		if due, failed := w.handle(msg, meta); failed && key != "" {
			w.held[key] = &hold{seq: meta.Sequence.Stream, due: due}
		}
	case meta.Sequence.Stream == h.seq: // the redelivery the key waits for
		if due, failed := w.handle(msg, meta); failed {
			h.due = due
			return
		}
		delete(w.held, key)
		w.handleWaiting(key, h.waiting)
	case meta.Sequence.Stream > h.seq:
		h.waiting = appendDelivery(h.waiting, msg, meta.Sequence.Stream)
	default: // an earlier message delivered again: most likely a duplicate
		w.handle(msg, meta)
	}
}

// appendDelivery adds msg to a key's waiting messages, replacing an
// earlier delivery of the same stream message.
func appendDelivery(waiting []natsjs.Msg, msg natsjs.Msg, seq uint64) []natsjs.Msg {
	for i, m := range waiting {
		if md, err := m.Metadata(); err == nil && md.Sequence.Stream == seq {
			waiting[i] = msg
			return waiting
		}
	}
	return append(waiting, msg)
}

// handleWaiting handles a released key's waiting messages in order until
// one fails, which holds the key again.
func (w *worker) handleWaiting(key string, waiting []natsjs.Msg) {
	for i, msg := range waiting {
		meta, err := msg.Metadata()
		if err != nil {
			continue
		}
		if due, failed := w.handle(msg, meta); failed {
			w.held[key] = &hold{seq: meta.Sequence.Stream, due: due, waiting: waiting[i+1:]}
			return
		}
	}
}

// tend keeps held messages from being redelivered, and releases a key
// whose failed message has not come back long after it was due: another
// Consumer on the same JetStream consumer took it, or it was deleted.
func (w *worker) tend() {
	now := time.Now()
	for key, h := range w.held {
		if now.After(h.due.Add(w.c.ackWait)) {
			w.log.Warn("jetstream consumer: failed message not redelivered; releasing its key",
				"key", key, "stream_seq", h.seq)
			delete(w.held, key)
			w.handleWaiting(key, h.waiting)
			continue
		}
		for _, msg := range h.waiting {
			if err := msg.InProgress(); err != nil {
				w.log.Warn("jetstream consumer: extend ack wait", "err", err)
			}
		}
	}
}

// releaseHolds gives held messages back to the server at shutdown, due
// after the failed message they wait behind.
func (w *worker) releaseHolds() {
	for key, h := range w.held {
		delay := time.Until(h.due) + holdMargin
		for _, msg := range h.waiting {
			if err := msg.NakWithDelay(delay); err != nil {
				w.log.Warn("jetstream consumer: release held message", "key", key, "err", err)
			}
		}
		delete(w.held, key)
	}
}

// handle runs the handler for one delivery through HandleOnce and settles
// it with the server: Ack after a commit or for a duplicate, Term when
// there is no point retrying, NakWithDelay otherwise. failed reports the
// last case, with the time the redelivery is due.
func (w *worker) handle(msg natsjs.Msg, meta *natsjs.MsgMetadata) (due time.Time, failed bool) {
	c := w.c
	log := w.log.With("stream_seq", meta.Sequence.Stream, "delivery", meta.NumDelivered)
	m, err := decode(msg.Subject(), msg.Headers(), msg.Data())
	if err != nil {
		c.terminated.Add(1)
		log.Error("jetstream consumer: terminating undecodable message", "err", err)
		w.settle(msg.Term, "term")
		return time.Time{}, false
	}
	log = log.With("message_id", m.ID)
	attempt := int(min(meta.NumDelivered, 1<<20))
	// The handler runs to its end even when Run's context ends: its work
	// commits or rolls back whole, and the message is settled either way.
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.HandlerTimeout)
	duplicate, err := inbox.HandleOnce(ctx, c.db, c.cfg.Subscriber, m, withAttempt(c.cfg.Handler, attempt))
	cancel()
	switch {
	case err == nil && duplicate:
		c.duplicates.Add(1)
		w.settle(msg.Ack, "ack")
	case err == nil:
		c.handled.Add(1)
		w.settle(msg.Ack, "ack")
	case postbox.IsPermanent(err):
		c.terminated.Add(1)
		log.Error("jetstream consumer: permanent error; terminating message", "err", err)
		w.settle(msg.Term, "term")
	case c.maxDeliver > 0 && attempt >= c.maxDeliver:
		// The server would not deliver it again; say so, and free its key.
		c.terminated.Add(1)
		log.Error("jetstream consumer: MaxDeliver reached; terminating message", "err", err)
		w.settle(msg.Term, "term")
	default:
		c.retried.Add(1)
		delay := retryDelay(c.cfg.Backoff, attempt)
		log.Warn("jetstream consumer: handler failed; redelivering later", "err", err, "retry_in", delay)
		w.settle(func() error { return msg.NakWithDelay(delay) }, "nak")
		return time.Now().Add(delay), true
	}
	return time.Time{}, false
}

// settle sends an acknowledgement. A lost one only means a redelivery,
// which HandleOnce recognizes.
func (w *worker) settle(send func() error, what string) {
	if err := send(); err != nil {
		w.log.Warn("jetstream consumer: "+what, "err", err)
	}
}

// withAttempt shows the handler the broker's delivery count, which
// HandleOnce does not know.
func withAttempt(h inbox.Handler, attempt int) inbox.Handler {
	return inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		d.Attempt = attempt
		return h.Handle(ctx, tx, d)
	})
}

// retryDelay is the wait after the given failed attempt: exponential with
// jitter (randomization 0.5), capped at b.Max, as postbox's inbox retries.
func retryDelay(b dispatcher.Backoff, failedAttempt int) time.Duration {
	eb := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(b.Initial),
		backoff.WithMultiplier(b.Multiplier),
		backoff.WithMaxInterval(b.Max),
		backoff.WithMaxElapsedTime(0),
	)
	var d time.Duration
	for range min(max(failedAttempt, 1), 100) {
		d = eb.NextBackOff()
	}
	return d
}
