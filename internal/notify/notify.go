// Package notify turns PostgreSQL notifications into wake-ups. A wake-up is
// a latency hint only: every waiter also polls, so a lost notification costs
// time, never a message.
package notify

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The channels postbox uses. Payloads are hints only.
const (
	// OutboxChannel wakes relays that listen (relay.Config.Listen);
	// producers notify it with outbox.Notify.
	OutboxChannel = "postbox_outbox"
	// InboxChannel wakes consumers; the relay notifies it after a batch
	// commits, once per subscriber that got deliveries, with the
	// subscriber's name as payload.
	InboxChannel = "postbox_inbox"
)

// Listener holds one connection of the pool in LISTEN on a channel. Take
// C() before doing work and wait on it after: a notification that arrives
// meanwhile still wakes the waiter.
type Listener struct {
	pool    *pgxpool.Pool
	channel string
	match   func(payload string) bool
	log     *slog.Logger

	mu   sync.Mutex
	ch   chan struct{}
	done chan struct{}
}

// Start listens on channel until ctx ends. Notifications whose payload
// match rejects are ignored; a nil match accepts all. A nil *Listener is
// valid and never fires.
func Start(ctx context.Context, pool *pgxpool.Pool, channel string, match func(string) bool, log *slog.Logger) *Listener {
	l := &Listener{pool: pool, channel: channel, match: match, log: log,
		ch: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		l.run(ctx)
	}()
	return l
}

// Wait returns once the listener has stopped (after ctx ended) and closed
// its connection. A nil *Listener returns at once.
func (l *Listener) Wait() {
	if l != nil {
		<-l.done
	}
}

// C returns a channel closed at the next matching notification.
func (l *Listener) C() <-chan struct{} {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ch
}

func (l *Listener) fire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	close(l.ch)
	l.ch = make(chan struct{})
}

func (l *Listener) run(ctx context.Context) {
	for ctx.Err() == nil {
		err := l.listen(ctx)
		if ctx.Err() != nil {
			return
		}
		l.log.Warn("listen failed; polling only until it reconnects", "channel", l.channel, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (l *Listener) listen(ctx context.Context) error {
	conn, err := l.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// A LISTENing connection must not go back to the pool for others.
	c := conn.Hijack()
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, "LISTEN "+pgx.Identifier{l.channel}.Sanitize()); err != nil {
		return err
	}
	// Work may have been published before LISTEN took effect.
	l.fire()
	for {
		n, err := c.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if l.match == nil || l.match(n.Payload) {
			l.fire()
		}
	}
}

// Sleep waits d, or until wake is closed; it reports false when ctx ended.
func Sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-wake:
	}
	return true
}
