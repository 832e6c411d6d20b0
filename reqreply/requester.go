package reqreply

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/invalid"
	"github.com/postbox-dev/postbox/outbox"
)

// Config configures a Requester. Zero values mean the defaults.
type Config struct {
	// Name names the requesters of one service. Each Requester's reply
	// queue is Name + ".reply." + 16 random hex digits, and a running
	// Requester sweeps the reply queues that Requesters of the same Name
	// left behind (see Requester.Sweep). Required; at most 177 characters.
	Name string
	// Handler receives every reply no Request waits for: replies to
	// requests sent with Send, replies that came after their Request gave
	// up (ErrTimeout), and replies left in the reply queue of a stopped or
	// crashed Requester of the same Name. It runs as a consumer's handler:
	// its effects commit with the reply's handling, exactly once, and a
	// failure is retried and ends as a dead letter. Nil: such a reply
	// becomes a dead letter of the reply queue at once, with ErrLateReply.
	Handler inbox.Handler
	// Timeout bounds a Request whose context has no earlier deadline.
	// Default 30s.
	Timeout time.Duration
	// Expiry is how long the reply queue of a gone Requester is kept after
	// a sweeper first found it orphaned, so that replies still on their
	// way reach Handler rather than dying as no-route letters. Default 10
	// minutes.
	Expiry time.Duration
	// SweepInterval is how often Run sweeps. Default 1 minute. Negative:
	// Run never sweeps (call Sweep yourself).
	SweepInterval time.Duration
	// Queue are the reply queue's settings. Zero fields take the
	// dispatcher's defaults, except DedupWindow (that of
	// replies), which defaults to 24 hours.
	Queue dispatcher.Options
	// Concurrency and PollInterval of the reply queue's consumer; see
	// inbox.Config. Defaults 4 and inbox.DefaultPollInterval (the relay's
	// notification wakes it sooner).
	Concurrency  int
	PollInterval time.Duration
	// Logger receives failures and lifecycle events. Default: silent.
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultTimeout          = 30 * time.Second
	DefaultExpiry           = 10 * time.Minute
	DefaultSweepInterval    = time.Minute
	DefaultReplyDedupWindow = 24 * time.Hour
	// answeredTTL is how long a reply handed to a waiting Request is
	// remembered, so that its redelivery (its batch failed after the
	// hand-over) is not taken for a late reply.
	answeredTTL = 10 * time.Minute
	suffixBytes = 8
)

// replyInfix separates Config.Name from the random part of a reply queue.
const replyInfix = ".reply."

func (c Config) withDefaults() (Config, error) {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Expiry == 0 {
		c.Expiry = DefaultExpiry
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = DefaultSweepInterval
	}
	if c.Queue.DedupWindow == 0 {
		c.Queue.DedupWindow = DefaultReplyDedupWindow
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	maxName := postbox.MaxNameLength - len(replyInfix) - 2*suffixBytes
	switch {
	case len(c.Name) > maxName:
		return c, invalid.Errorf("Config.Name", "%d characters, more than %d", len(c.Name), maxName)
	case c.Timeout < 0:
		return c, invalid.Errorf("Config.Timeout", "negative")
	case c.Expiry < 0:
		return c, invalid.Errorf("Config.Expiry", "negative")
	}
	if err := postbox.ValidateName("Config.Name", c.Name); err != nil {
		return c, err
	}
	return c, nil
}

// Requester sends requests and receives their replies on a reply queue of
// its own. Create one per process with NewRequester and Run it; Request
// and Send may then be called from any goroutine.
type Requester struct {
	pool  *pgxpool.Pool
	cfg   Config
	queue string

	ready   chan struct{} // closed once Run has declared the queue
	stopped chan struct{} // closed when Run returns

	mu       sync.Mutex
	waiters  map[string]chan *inbox.Delivery // by correlation-id
	answered map[uuid.UUID]time.Time         // reply IDs handed to waiters
	pruned   time.Time
	orphans  map[string]time.Time // reply queues found orphaned, and since when
}

// NewRequester returns a Requester over pool. It touches no database:
// Run declares its reply queue.
func NewRequester(pool *pgxpool.Pool, cfg Config) (*Requester, error) {
	if pool == nil {
		return nil, invalid.Nil("pool")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	suffix := make([]byte, suffixBytes)
	if _, err := rand.Read(suffix); err != nil {
		return nil, fmt.Errorf("reqreply: reply queue name: %w", err)
	}
	return &Requester{
		pool:     pool,
		cfg:      cfg,
		queue:    cfg.Name + replyInfix + hex.EncodeToString(suffix),
		ready:    make(chan struct{}),
		stopped:  make(chan struct{}),
		waiters:  map[string]chan *inbox.Delivery{},
		answered: map[uuid.UUID]time.Time{},
		orphans:  map[string]time.Time{},
	}, nil
}

// ReplyQueue is the name of the Requester's reply queue.
func (r *Requester) ReplyQueue() string { return r.queue }

// Ready is closed once Run has declared the reply queue and taken its
// lock: from then on Request sends at once. A Request before that waits
// for it, and its context's deadline counts that wait too.
func (r *Requester) Ready() <-chan struct{} { return r.ready }

// Run declares the reply queue, takes the lock that tells sweepers the
// queue is in use (a session lock on a connection of its own, outside the
// pool: Run needs a session, not a transaction-mode pooler), and consumes
// replies until ctx ends; every SweepInterval it sweeps the reply queues
// that Requesters of the same Name left behind. When ctx ends it finishes
// the reply in hand and returns nil, leaving its queue to be swept by the
// Requesters of its Name that still run, after Expiry (replies to requests
// sent with Send may still be on their way). Run can be called once.
func (r *Requester) Run(ctx context.Context) error {
	defer close(r.stopped)
	log := r.cfg.Logger.With("reply_queue", r.queue)
	owner, err := r.own(ctx)
	if err != nil {
		return err
	}
	// maintain may replace owner: close the one there is at the end.
	defer func() { owner.Close(context.Background()) }()
	consumer, err := inbox.NewConsumer(r.pool, inbox.Config{
		Subscriber:   r.queue,
		Handler:      inbox.HandlerFunc(r.handle),
		Concurrency:  r.cfg.Concurrency,
		PollInterval: r.cfg.PollInterval,
		Logger:       r.cfg.Logger,
	})
	if err != nil {
		return err
	}
	close(r.ready)
	log.Info("requester started")
	defer log.Info("requester stopped")

	var wg sync.WaitGroup
	wg.Go(func() {
		if err := consumer.Run(ctx); err != nil {
			log.Error("reply consumer stopped", "err", err)
		}
	})
	if r.cfg.SweepInterval > 0 {
		wg.Go(func() { r.maintain(ctx, &owner, log) })
	}
	wg.Wait()
	return nil
}

// own connects outside the pool, takes the reply queue's lock and declares
// the queue.
func (r *Requester) own(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, r.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("reqreply: connect: %w", err)
	}
	locked, err := db.New(conn).TryLockReplyQueue(ctx, r.queue)
	if err == nil && !locked {
		err = fmt.Errorf("the lock of %s is held by another session", r.queue)
	}
	if err == nil {
		err = dispatcher.DeclareQueue(ctx, r.pool, r.queue, r.cfg.Queue)
	}
	if err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("reqreply: own reply queue %s: %w", r.queue, err)
	}
	return conn, nil
}

// maintain sweeps every SweepInterval and checks that the lock connection
// still lives: a lost one is replaced, and the queue declared again in
// case a sweeper took it for orphaned and dropped it meanwhile (replies
// that came then are no-route dead letters of the queue's name).
func (r *Requester) maintain(ctx context.Context, owner **pgx.Conn, log *slog.Logger) {
	t := time.NewTicker(r.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := (*owner).Ping(ctx); err != nil && ctx.Err() == nil {
			log.Warn("lost the reply queue's lock connection; taking the lock again", "err", err)
			if conn, err := r.own(ctx); err == nil {
				(*owner).Close(context.Background())
				*owner = conn
			} else {
				log.Error("take the reply queue's lock again", "err", err)
			}
		}
		if n, err := r.Sweep(ctx); err != nil && ctx.Err() == nil {
			log.Error("sweep reply queues", "err", err)
		} else if n > 0 {
			log.Info("dropped reply queues of gone requesters", "queues", n)
		}
	}
}

// waitReady waits until Run has declared the queue.
func (r *Requester) waitReady(ctx context.Context) error {
	select {
	case <-r.stopped:
		return ErrStopped
	default:
	}
	select {
	case <-r.ready:
		return nil
	case <-r.stopped:
		return ErrStopped
	case <-ctx.Done():
		return fmt.Errorf("reqreply: waiting for the requester to run: %w", ctx.Err())
	}
}

// Request sends msg to the queue msg.Topic and waits for its reply, at
// most Config.Timeout or until ctx ends. The request is committed in a
// transaction of its own before Request waits (it must be, for a replier
// to see it). Its correlation-id header is its ID, which Request fills in
// if empty; reply-to names the reply queue. Other headers are kept, and a
// conversation's correlation from ctx (postbox.WithCause) is replaced:
// the correlation-id must name this request.
//
// The reply is the delivery the reply queue's consumer received. When
// none came in time, Request returns an error matching ErrTimeout (or
// ctx's error); a reply that comes later is handed to Config.Handler, or
// dead-lettered with ErrLateReply, and never to another Request.
func (r *Requester) Request(ctx context.Context, msg *postbox.Message) (*inbox.Delivery, error) {
	if msg == nil {
		return nil, invalid.Nil("msg")
	}
	timeout := r.cfg.Timeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := r.waitReady(waitCtx); err != nil {
		return nil, err
	}
	if msg.ID == uuid.Nil {
		msg.ID = postbox.NewID()
	}
	corr := msg.ID.String()
	h := make(map[string]string, len(msg.Headers)+2)
	maps.Copy(h, msg.Headers)
	h[postbox.HeaderReplyTo] = r.queue
	h[postbox.HeaderCorrelationID] = corr
	msg.Headers = h

	ch := make(chan *inbox.Delivery, 1)
	r.mu.Lock()
	r.waiters[corr] = ch
	r.mu.Unlock()
	if err := outbox.Send(ctx, r.pool, msg); err != nil {
		r.forget(corr)
		return nil, err
	}
	select {
	case d := <-ch:
		return d, nil
	case <-timer.C:
	case <-ctx.Done():
	case <-r.stopped:
	}
	// Given up, unless the reply came meanwhile: once forgotten, the
	// handler sends it to the late path instead.
	r.forget(corr)
	select {
	case d := <-ch:
		return d, nil
	default:
	}
	select {
	case <-r.stopped:
		return nil, ErrStopped
	default:
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("reqreply: request %s to %s: %w", msg.ID, msg.Topic, ctx.Err())
	}
	return nil, fmt.Errorf("%w: request %s to %s after %s", ErrTimeout, msg.ID, msg.Topic, timeout)
}

func (r *Requester) forget(corr string) {
	r.mu.Lock()
	delete(r.waiters, corr)
	r.mu.Unlock()
}

// Send writes msg for the queue msg.Topic through tx, normally the
// caller's business transaction, with reply-to naming the reply queue, and
// returns at once: the reply goes to Config.Handler, which must be set.
// The correlation-id is left to package outbox's rules (msg's own, else
// the conversation's from ctx); the reply names the request as its
// causation-id. Send waits until Run has declared the reply queue.
func (r *Requester) Send(ctx context.Context, tx postbox.DBTX, msg *postbox.Message) error {
	if msg == nil {
		return invalid.Nil("msg")
	}
	if r.cfg.Handler == nil {
		return invalid.Errorf("Config.Handler", "nil: Send's replies go to the Handler")
	}
	if err := r.waitReady(ctx); err != nil {
		return err
	}
	h := make(map[string]string, len(msg.Headers)+1)
	maps.Copy(h, msg.Headers)
	h[postbox.HeaderReplyTo] = r.queue
	msg.Headers = h
	return outbox.Send(ctx, tx, msg)
}

// handle is the reply queue's handler: a reply a Request waits for is
// handed to it (once, even when the handler runs again for the same reply);
// any other goes to the late path.
func (r *Requester) handle(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	corr := d.Headers[postbox.HeaderCorrelationID]
	if corr == "" {
		return postbox.Permanent(fmt.Errorf("%w: reply %s", ErrNoCorrelation, d.ID))
	}
	now := time.Now()
	r.mu.Lock()
	if _, done := r.answered[d.ID]; done {
		r.mu.Unlock()
		return nil // handed over already; this is a re-run or a redelivery
	}
	if ch, ok := r.waiters[corr]; ok {
		delete(r.waiters, corr)
		r.answered[d.ID] = now
		r.pruneLocked(now)
		r.mu.Unlock()
		reply := *d
		ch <- &reply // buffered, and sent at most once: the waiter is gone from the map
		return nil
	}
	r.mu.Unlock()
	return r.late(ctx, tx, d)
}

// late handles a reply no Request waits for.
func (r *Requester) late(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	if r.cfg.Handler != nil {
		return r.cfg.Handler.Handle(ctx, tx, d)
	}
	return postbox.Permanent(fmt.Errorf("%w: reply %s, correlation-id %s", ErrLateReply, d.ID, d.Headers[postbox.HeaderCorrelationID]))
}

// pruneLocked forgets hand-overs older than answeredTTL, once a minute.
func (r *Requester) pruneLocked(now time.Time) {
	if now.Sub(r.pruned) < time.Minute {
		return
	}
	r.pruned = now
	for id, at := range r.answered {
		if now.Sub(at) > answeredTTL {
			delete(r.answered, id)
		}
	}
}
