package relay

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// listener holds one pooled connection in LISTEN and turns notifications
// into wake-ups on C. It is a hint: a lost notification only costs latency,
// so it reconnects quietly after errors.
type listener struct {
	pool    *pgxpool.Pool
	channel string
	log     *slog.Logger
	C       chan struct{}
}

func newListener(pool *pgxpool.Pool, channel string, log *slog.Logger) *listener {
	// Capacity 1: wake-ups coalesce, so a burst costs one extra claim.
	return &listener{pool: pool, channel: channel, log: log, C: make(chan struct{}, 1)}
}

func (l *listener) run(ctx context.Context) {
	for ctx.Err() == nil {
		if err := l.listen(ctx); err != nil && ctx.Err() == nil {
			l.log.Warn("listen failed; polling only until it reconnects", "channel", l.channel, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (l *listener) listen(ctx context.Context) error {
	conn, err := l.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// A LISTENing connection must not go back to the pool for others.
	defer conn.Hijack().Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{l.channel}.Sanitize()); err != nil {
		return err
	}
	for {
		if _, err := conn.Conn().WaitForNotification(ctx); err != nil {
			return err
		}
		select {
		case l.C <- struct{}{}:
		default:
		}
	}
}
