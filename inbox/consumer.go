package inbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/headers"
	"github.com/postbox-dev/postbox/internal/notify"
	"github.com/postbox-dev/postbox/relay"
)

// Config configures a Consumer. Zero values mean the defaults.
type Config struct {
	// Subscriber is the queue or topic subscriber to consume. It must be
	// declared (package dispatcher); its retry settings apply, re-read
	// every minute, so changes reach running consumers.
	Subscriber string
	// Handler handles each delivery.
	Handler Handler
	// BatchSize is the most deliveries claimed and committed together.
	// Default 50. Each handler that writes runs in a savepoint, and
	// PostgreSQL keeps the IDs of only 64 such subtransactions per
	// transaction in shared memory before every snapshot gets slower, so
	// values above 64 trade that for fewer commits.
	BatchSize int
	// Concurrency is how many batches are handled at once, each in its own
	// transaction on its own connection. Default 4. Give the pool more than
	// Concurrency connections: a handler that uses the pool rather than its
	// transaction needs one of its own. Unless NoListen is set, the consumer also
	// takes one connection out of the pool to LISTEN: it does not count
	// against the pool's MaxConns, but it does count against the server's
	// max_connections.
	Concurrency int
	// PollInterval is how long an idle worker waits before looking again
	// when no wake-up arrives; retries and delayed messages become due
	// without one. Default 100ms.
	PollInterval time.Duration
	// HandlerTimeout bounds one handler call through its context.
	// Default 30s. A handler that ignores its context cannot be stopped.
	HandlerTimeout time.Duration
	// NoListen turns off LISTEN for the relay's wake-ups: workers then only
	// poll.
	NoListen bool
	// Logger receives failures and lifecycle events. Default: silent.
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultBatchSize      = 50
	DefaultConcurrency    = 4
	DefaultPollInterval   = 100 * time.Millisecond
	DefaultHandlerTimeout = 30 * time.Second
	maxBatchSize          = 10_000
	maxConcurrency        = 1024
	maxErrorBytes         = 4096
)

func (c Config) withDefaults() (Config, error) {
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.HandlerTimeout == 0 {
		c.HandlerTimeout = DefaultHandlerTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if err := postbox.ValidateName("Config.Subscriber", c.Subscriber); err != nil {
		return c, err
	}
	switch {
	case c.Handler == nil:
		return c, fmt.Errorf("inbox: Config.Handler is nil")
	case c.BatchSize < 1 || c.BatchSize > maxBatchSize:
		return c, fmt.Errorf("inbox: Config.BatchSize %d: want 1 to %d", c.BatchSize, maxBatchSize)
	case c.Concurrency < 1 || c.Concurrency > maxConcurrency:
		return c, fmt.Errorf("inbox: Config.Concurrency %d: want 1 to %d", c.Concurrency, maxConcurrency)
	case c.PollInterval < 0:
		return c, fmt.Errorf("inbox: Config.PollInterval %s: negative", c.PollInterval)
	case c.HandlerTimeout < 0:
		return c, fmt.Errorf("inbox: Config.HandlerTimeout %s: negative", c.HandlerTimeout)
	}
	return c, nil
}

// Stats are a consumer's counters since it was created.
type Stats struct {
	Batches    int64 // transactions that claimed at least one delivery
	Handled    int64 // deliveries handled and committed... counted at commit
	Failed     int64 // failed attempts that will be retried
	Dead       int64 // deliveries dead-lettered
	Duplicates int64 // deliveries dropped as already handled
	Errors     int64 // batches that failed as a whole (connection, commit)
}

// Consumer handles one subscriber's deliveries. Run many, in one process or
// many: they compete with SKIP LOCKED and never handle a delivery twice.
type Consumer struct {
	pool *pgxpool.Pool
	cfg  Config
	q    *db.Queries

	policyMu     sync.Mutex
	policy       *retryPolicy
	policyLoaded time.Time

	// isolate counts claims still to take one delivery at a time after a
	// refused commit.
	isolate atomic.Int64

	// cursor is the key the last key walk stopped after.
	cursorMu sync.Mutex
	cursor   string

	batches, handled, failed, dead, duplicates, errs atomic.Int64
}

// NewConsumer returns a consumer of cfg.Subscriber over pool.
func NewConsumer(pool *pgxpool.Pool, cfg Config) (*Consumer, error) {
	if pool == nil {
		return nil, errors.New("inbox: nil pool")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Consumer{pool: pool, cfg: cfg, q: db.New(pool)}, nil
}

// Stats returns the consumer's counters.
func (c *Consumer) Stats() Stats {
	return Stats{
		Batches:    c.batches.Load(),
		Handled:    c.handled.Load(),
		Failed:     c.failed.Load(),
		Dead:       c.dead.Load(),
		Duplicates: c.duplicates.Load(),
		Errors:     c.errs.Load(),
	}
}

// Run handles deliveries until ctx ends, with cfg.Concurrency workers. When
// ctx ends, each worker finishes the handler in flight, commits what its
// batch handled, releases the rest, and Run returns nil. It returns an error
// only when the subscriber cannot be loaded at start.
func (c *Consumer) Run(ctx context.Context) error {
	if _, err := c.loadPolicy(ctx); err != nil {
		return err
	}
	log := c.cfg.Logger.With("subscriber", c.cfg.Subscriber)
	log.Info("consumer started", "concurrency", c.cfg.Concurrency, "batch_size", c.cfg.BatchSize)
	defer log.Info("consumer stopped")
	var wake *notify.Listener
	if !c.cfg.NoListen {
		sub := c.cfg.Subscriber
		wake = notify.Start(ctx, c.pool, relay.InboxChannel, func(p string) bool { return p == sub }, log)
		defer wake.Wait()
	}
	var wg sync.WaitGroup
	for range c.cfg.Concurrency {
		wg.Go(func() { c.work(ctx, wake, log) })
	}
	wg.Wait()
	return nil
}

func (c *Consumer) work(ctx context.Context, wake *notify.Listener, log *slog.Logger) {
	wait := c.cfg.PollInterval
	for ctx.Err() == nil {
		woken := wake.C()
		n, err := c.RunOnce(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			log.Error("batch failed", "err", err, "retry_in", wait)
			wait = min(max(2*wait, c.cfg.PollInterval), 5*time.Second)
		case n > 0:
			// More may be ready, even after a short batch: a batch holds
			// at most one delivery per key, and handling it made the
			// key's next one claimable. Only an empty claim means nothing
			// is ready.
			wait = c.cfg.PollInterval
			continue
		default:
			wait = c.cfg.PollInterval
		}
		if !notify.Sleep(ctx, wait, woken) {
			return
		}
	}
}

// policyTTL is how long retry settings are used before being read again.
const policyTTL = time.Minute

// loadPolicy returns the subscriber's retry settings, read at most once per
// policyTTL. If a re-read fails, the settings already known stay in use.
func (c *Consumer) loadPolicy(ctx context.Context) (retryPolicy, error) {
	c.policyMu.Lock()
	defer c.policyMu.Unlock()
	if c.policy != nil && time.Since(c.policyLoaded) < policyTTL {
		return *c.policy, nil
	}
	sub, err := dispatcher.GetSubscriber(ctx, c.pool, c.cfg.Subscriber)
	if err != nil {
		if c.policy != nil {
			c.cfg.Logger.Warn("re-read subscriber settings", "subscriber", c.cfg.Subscriber, "err", err)
			return *c.policy, nil
		}
		return retryPolicy{}, fmt.Errorf("inbox: load subscriber: %w", err)
	}
	c.policy = &retryPolicy{maxAttempts: sub.Options.MaxAttempts, backoff: sub.Options.Backoff}
	c.policyLoaded = time.Now()
	return *c.policy, nil
}

// failure is one failed attempt, to record.
type failure struct {
	id       uuid.UUID
	attempts int
	err      string
	delay    time.Duration
	dead     bool
}

// RunOnce claims one batch, handles it and commits, and returns how many
// deliveries it claimed. Handlers run one after another, each in a
// savepoint: a failure rolls back only its own effects. When ctx ends
// mid-batch, the handler in flight finishes, what was handled commits, and
// the rest is released for another attempt.
func (c *Consumer) RunOnce(ctx context.Context) (int, error) {
	policy, err := c.loadPolicy(ctx)
	if err != nil {
		return 0, err
	}
	size := c.cfg.BatchSize
	if c.isolate.Load() > 0 {
		// A commit was refused: claim one delivery at a time until the
		// one whose effects the server rejects has been found.
		c.isolate.Add(-1)
		size = 1
	}
	// The batch itself is not cut short by ctx: it commits or rolls back
	// whole, and ctx only stops it from starting more handlers.
	bctx := context.WithoutCancel(ctx)
	// The claim's reasoning (a locked row re-checked, a deleted one skipped)
	// is READ COMMITTED's, whatever the server's default.
	tx, err := c.pool.BeginTx(bctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		c.errs.Add(1)
		return 0, fmt.Errorf("inbox: begin: %w", err)
	}
	defer tx.Rollback(bctx)
	q := c.q.WithTx(tx)
	rows, err := c.claim(bctx, q, size)
	if err != nil {
		c.errs.Add(1)
		return 0, err
	}
	if len(rows) == 0 {
		return 0, tx.Commit(bctx)
	}
	// A duplicate can race the relay's dedup check (inserted while the
	// original's "handled" commit was in flight); this statement's snapshot
	// sees every commit the duplicate's own insert waited for.
	handledIDs, err := q.ProcessedAmong(bctx, db.ProcessedAmongParams{Subscriber: c.cfg.Subscriber, MessageIds: heldIDs(rows)})
	if err != nil {
		c.errs.Add(1)
		return 0, fmt.Errorf("inbox: dedup check: %w", err)
	}
	alreadyHandled := make(map[uuid.UUID]bool, len(handledIDs))
	for _, id := range handledIDs {
		alreadyHandled[id] = true
	}
	slices.SortFunc(rows, func(a, b db.ClaimBatchRow) int { return cmp.Compare(deref(a.Seq), deref(b.Seq)) })

	var (
		done  []uuid.UUID
		fails []failure
		dups  int
		sp    = savepoint{tx: tx}
	)
	// lastOK is the index in done of the delivery handled just before, whose
	// handler may have returned nil yet left the transaction aborted or the
	// connection unusable (a swallowed error, rows left open); lastTimedOut
	// says its context had expired by then.
	lastOK := -1
	lastTimedOut := false
	// afterHandler deals with an error from the statement that follows a
	// handler. If the handler returned nil but left the transaction aborted,
	// its delivery failed after all, and the batch goes on from its
	// savepoint. If it left the connection busy (rows not closed), or its
	// own timeout closed it, the batch is lost and that delivery's failed
	// attempt is recorded on its own, so it cannot stall every batch it
	// lands in. A connection closed otherwise (a killed backend) is nobody's
	// fault: the batch is simply tried again.
	afterHandler := func(step string, err error) error {
		if lastOK < 0 {
			c.errs.Add(1)
			return fmt.Errorf("inbox: %s: %w", step, err)
		}
		culprit := rowByID(rows, done[lastOK])
		if !isAborted(err) {
			c.errs.Add(1)
			blamed := lastTimedOut || !tx.Conn().IsClosed()
			_ = tx.Rollback(bctx) // give the connection back before taking another
			if blamed {
				c.recordAlone(c.classify(policy, culprit, fmt.Errorf("handler returned nil but left the connection unusable: %w", err)))
			}
			return fmt.Errorf("inbox: %s after %s: %w", step, culprit.MessageID, err)
		}
		done = slices.Delete(done, lastOK, lastOK+1)
		fails = append(fails, c.classify(policy, culprit, fmt.Errorf("handler returned nil but left the transaction aborted: %w", err)))
		lastOK = -1
		if err := sp.rollback(bctx); err != nil {
			c.errs.Add(1)
			return fmt.Errorf("inbox: rollback to savepoint: %w", err)
		}
		return nil
	}
	for _, r := range rows {
		if ctx.Err() != nil {
			break
		}
		if alreadyHandled[r.MessageID] {
			done = append(done, r.MessageID)
			dups++
			continue
		}
		if err := sp.next(bctx); err != nil {
			if err := afterHandler("savepoint", err); err != nil {
				return 0, err
			}
		}
		d := toDelivery(c.cfg.Subscriber, r)
		timedOut, herr := c.call(bctx, tx, d)
		if herr == nil {
			done = append(done, d.ID)
			lastOK, lastTimedOut = len(done)-1, timedOut
			continue
		}
		lastOK = -1
		f := c.classify(policy, r, herr)
		if err := sp.rollback(bctx); err != nil {
			// The connection is gone (a handler timeout closes it, so does
			// a killed backend): the batch rolls back, and this delivery's
			// failed attempt is recorded on its own so it cannot loop.
			c.errs.Add(1)
			_ = tx.Rollback(bctx) // give the connection back before taking another
			c.recordAlone(f)
			return 0, fmt.Errorf("inbox: rollback to savepoint after %s failed: %w", d.ID, err)
		}
		c.cfg.Logger.Warn("handler failed", "subscriber", c.cfg.Subscriber, "message_id", d.ID,
			"attempt", d.Attempt, "dead", f.dead, "err", herr)
		fails = append(fails, f)
	}
	if err := sp.release(bctx); err != nil {
		if err := afterHandler("release savepoint", err); err != nil {
			return 0, err
		}
	}
	if len(done) > 0 {
		if err := q.CompleteDeliveries(bctx, db.CompleteDeliveriesParams{Subscriber: c.cfg.Subscriber, MessageIds: done}); err != nil {
			c.errs.Add(1)
			return 0, fmt.Errorf("inbox: complete: %w", err)
		}
	}
	if len(fails) > 0 {
		if _, err := q.FailDeliveries(bctx, failParams(c.cfg.Subscriber, fails)); err != nil {
			c.errs.Add(1)
			return 0, fmt.Errorf("inbox: record failures: %w", err)
		}
	}
	if err := tx.Commit(bctx); err != nil {
		c.errs.Add(1)
		c.commitRefused(policy, rows, done, err)
		return 0, fmt.Errorf("inbox: commit: %w", err)
	}
	c.batches.Add(1)
	c.handled.Add(int64(len(done) - dups))
	c.duplicates.Add(int64(dups))
	for _, f := range fails {
		if f.dead {
			c.dead.Add(1)
		} else {
			c.failed.Add(1)
		}
	}
	return len(rows), nil
}

// commitRefused handles a commit the server refused (a deferred constraint
// a handler's effects violate): some delivery of the batch is to blame, and
// claiming the same batch again would fail again. With one delivery, its
// failed attempt is recorded on its own; with more, the next claims take
// one delivery each until the culprit has shown itself.
func (c *Consumer) commitRefused(p retryPolicy, rows []db.ClaimBatchRow, done []uuid.UUID, err error) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return // the connection failed: nobody's fault, try again
	}
	if len(rows) == 1 && len(done) == 1 {
		c.recordAlone(c.classify(p, rows[0], fmt.Errorf("commit refused: %w", err)))
		return
	}
	c.isolate.Store(int64(len(rows)))
}

// claim locks up to size deliveries that may be handled now: first the
// fast path (the oldest deliveries, in age order), then, if that falls
// short, keyless deliveries and the heads of keys the fast path did not
// reach.
func (c *Consumer) claim(ctx context.Context, q *db.Queries, size int) ([]db.ClaimBatchRow, error) {
	rows, err := q.ClaimBatch(ctx, db.ClaimBatchParams{
		Subscriber: c.cfg.Subscriber,
		ScanLimit:  int32(scanFactor * size),
		BatchSize:  int32(size),
	})
	if err != nil {
		return nil, fmt.Errorf("inbox: claim: %w", err)
	}
	if len(rows) < size {
		more, err := q.ClaimKeyless(ctx, db.ClaimKeylessParams{
			Subscriber: c.cfg.Subscriber,
			Held:       heldIDs(rows),
			BatchSize:  int32(size - len(rows)),
		})
		if err != nil {
			return nil, fmt.Errorf("inbox: claim keyless: %w", err)
		}
		for _, r := range more {
			rows = append(rows, db.ClaimBatchRow(r))
		}
	}
	if len(rows) < size {
		more, err := c.claimKeyHeads(ctx, q, rows, size)
		if err != nil {
			return nil, fmt.Errorf("inbox: claim key heads: %w", err)
		}
		rows = append(rows, more...)
	}
	return rows, nil
}

func heldIDs(rows []db.ClaimBatchRow) []uuid.UUID {
	ids := make([]uuid.UUID, len(rows))
	for i, r := range rows {
		ids[i] = r.MessageID
	}
	return ids
}

// scanFactor bounds both ways of claiming: the fast path looks at
// scanFactor × BatchSize of the oldest available deliveries, and a key walk
// visits as many keys.
const scanFactor = 4

// claimKeyHeads fills a short batch with the heads of keys the fast path did
// not reach: when a few hot keys hold most of the backlog, the oldest
// deliveries mostly wait behind their key's head, and scanning them one by
// one would cost the whole backlog. The walk visits each key once, in key
// order, starting where the previous walk stopped and wrapping at the end,
// so every key gets its turn.
func (c *Consumer) claimKeyHeads(ctx context.Context, q *db.Queries, have []db.ClaimBatchRow, size int) ([]db.ClaimBatchRow, error) {
	visit := scanFactor * size
	c.cursorMu.Lock()
	after := c.cursor
	c.cursorMu.Unlock()
	heads, err := q.WalkKeyHeads(ctx, db.WalkKeyHeadsParams{Subscriber: c.cfg.Subscriber, AfterKey: after, VisitLimit: int32(visit)})
	if err != nil {
		return nil, err
	}
	next := "" // reached the last key: start over next time
	if len(heads) == visit {
		next = heads[len(heads)-1].Key
	}
	c.cursorMu.Lock()
	c.cursor = next
	c.cursorMu.Unlock()

	held := make(map[uuid.UUID]bool, len(have))
	for _, r := range have {
		held[r.MessageID] = true
	}
	var ids []uuid.UUID
	for _, h := range heads {
		if h.Available && !held[h.MessageID] {
			ids = append(ids, h.MessageID)
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	more, err := q.ClaimByIDs(ctx, db.ClaimByIDsParams{
		Subscriber: c.cfg.Subscriber,
		MessageIds: ids,
		BatchSize:  int32(size - len(have)),
	})
	if err != nil {
		return nil, err
	}
	out := make([]db.ClaimBatchRow, len(more))
	for i, r := range more {
		out[i] = db.ClaimBatchRow(r)
	}
	return out, nil
}

// call runs the handler with its timeout, the message as the cause of what
// it publishes, and panics turned into errors. timedOut reports whether the
// handler's context had expired when it returned.
func (c *Consumer) call(ctx context.Context, tx pgx.Tx, d *Delivery) (timedOut bool, err error) {
	hctx, cancel := context.WithTimeout(postbox.WithCause(ctx, &d.Message), c.cfg.HandlerTimeout)
	defer cancel()
	defer func() { timedOut = hctx.Err() != nil }()
	defer func() {
		if p := recover(); p != nil {
			c.cfg.Logger.Error("handler panicked", "subscriber", d.Subscriber, "message_id", d.ID,
				"panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("handler panicked: %v", p)
		}
	}()
	return false, c.cfg.Handler.Handle(hctx, ownedTx{tx}, d)
}

// classify turns a handler error into the failure to record: dead when
// permanent or out of attempts, otherwise retried after a backoff.
func (c *Consumer) classify(p retryPolicy, r db.ClaimBatchRow, err error) failure {
	attempts := int(r.Attempts) + 1
	f := failure{id: r.MessageID, attempts: attempts, err: errorText(err)}
	if postbox.IsPermanent(err) || attempts >= p.maxAttempts {
		f.dead = true
	} else {
		f.delay = p.delay(attempts)
	}
	return f
}

// errorText is err's message as PostgreSQL text can hold it: valid UTF-8
// without NUL bytes (each bad byte becomes U+FFFD), cut at a character
// boundary to at most maxErrorBytes. Text it cannot hold would fail the
// statement recording the whole batch's outcome, on every attempt.
func errorText(err error) string {
	msg := strings.ReplaceAll(strings.ToValidUTF8(err.Error(), "\uFFFD"), "\x00", "\uFFFD")
	if len(msg) > maxErrorBytes {
		cut := maxErrorBytes
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut]
	}
	return msg
}

// recordAlone records one failed attempt in a transaction of its own, after
// the batch's transaction was lost. It is idempotent: an attempt already
// counted is not counted again, in the table or in Stats.
func (c *Consumer) recordAlone(f failure) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := c.q.FailDeliveries(ctx, failParams(c.cfg.Subscriber, []failure{f}))
	switch {
	case err != nil:
		c.cfg.Logger.Error("record failed attempt", "subscriber", c.cfg.Subscriber, "message_id", f.id, "err", err)
	case n == 1 && f.dead:
		c.dead.Add(1)
	case n == 1:
		c.failed.Add(1)
	}
}

func failParams(subscriber string, fails []failure) db.FailDeliveriesParams {
	p := db.FailDeliveriesParams{Subscriber: subscriber}
	for _, f := range fails {
		p.MessageIds = append(p.MessageIds, f.id)
		p.Attempts = append(p.Attempts, int32(f.attempts))
		p.Errors = append(p.Errors, f.err)
		p.DelaysMs = append(p.DelaysMs, f.delay.Milliseconds())
		p.Dead = append(p.Dead, f.dead)
	}
	return p
}

func toDelivery(subscriber string, r db.ClaimBatchRow) *Delivery {
	d := &Delivery{
		Message: postbox.Message{
			ID:        r.MessageID,
			Topic:     r.Topic,
			Type:      r.Type,
			Payload:   r.Payload,
			CreatedAt: r.CreatedAt,
		},
		Subscriber: subscriber,
		Attempt:    int(r.Attempts) + 1,
		Partition:  int(r.Partition),
	}
	if r.Key != nil {
		d.Key = *r.Key
	}
	// A headers column that is not a JSON object (only hand-written SQL
	// could do that) leaves the delivery without headers rather than
	// failing it.
	d.Headers, _ = headers.Decode(r.Headers)
	return d
}

func rowByID(rows []db.ClaimBatchRow, id uuid.UUID) db.ClaimBatchRow {
	for _, r := range rows {
		if r.MessageID == id {
			return r
		}
	}
	panic("inbox: delivery not in its batch")
}

func deref(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// isAborted reports whether err is PostgreSQL's "current transaction is
// aborted" (25P02).
func isAborted(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "25P02"
}

// savepoint keeps one savepoint open around the current handler. Moving to
// the next handler releases the previous savepoint and opens a new one in
// one round trip.
type savepoint struct {
	tx   pgx.Tx
	open bool
}

func (s *savepoint) next(ctx context.Context) error {
	sql := "SAVEPOINT postbox_delivery"
	if s.open {
		sql = "RELEASE SAVEPOINT postbox_delivery; SAVEPOINT postbox_delivery"
	}
	if _, err := s.tx.Exec(ctx, sql); err != nil {
		return err
	}
	s.open = true
	return nil
}

// rollback undoes everything since the savepoint, which stays open.
func (s *savepoint) rollback(ctx context.Context) error {
	_, err := s.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT postbox_delivery")
	return err
}

func (s *savepoint) release(ctx context.Context) error {
	if !s.open {
		return nil
	}
	if _, err := s.tx.Exec(ctx, "RELEASE SAVEPOINT postbox_delivery"); err != nil {
		return err
	}
	s.open = false
	return nil
}
