package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/metrics"
	"github.com/postbox-dev/postbox/relay"
	"github.com/postbox-dev/postbox/schema"
)

// shutdownBudget bounds waiting for the relay and the janitor after
// SIGTERM; stopping the HTTP server (1s) and closing the pool (2s) come on
// top, which keeps the whole shutdown under the promised 10 seconds.
const shutdownBudget = 6 * time.Second

func (c *cli) relay(ctx context.Context, args []string) error {
	f := newFlags("relay", "postbox relay [flags]", `
Run the relay until SIGTERM or SIGINT: move committed outbox messages into the
inbox stream of every subscriber they route to, one statement per batch. An
outbox row the relay cannot move is quarantined as a dead letter of _relay
(postbox dlq list --subscriber _relay) so that the others keep moving. The
janitor runs alongside and forgets handled message IDs past their subscriber's
dedup window. On SIGTERM the batch in flight commits or rolls back whole and
the process exits 0 within 10 seconds. Several relays may run on one database.

With --http, serves /healthz (200 while the database answers a ping within
1s), /readyz (200 once started on a migrated schema; 503 while stopping, and
while due messages wait and no relay statement has succeeded, or none has
moved anything, for --stall-after) and /metrics (Prometheus; bounded work
whatever the backlog). With --admin it also serves the admin pages under
/admin/ (see postbox admin --help). A bare ":PORT" listens on loopback only;
give 0.0.0.0:PORT to listen on every interface (with --admin, that requires
POSTBOX_ADMIN_TOKEN or POSTBOX_ADMIN_PASSWORD). The actual address is logged
as "http listening addr=...", so ":0" picks a free port.`)
	g := f.common()
	batchSize := f.Int("batch-size", relay.DefaultBatchSize, "most outbox rows moved per transaction (1 to 100000)")
	poll := f.Duration("poll-interval", relay.DefaultPollInterval, "how long an idle relay waits before looking again")
	listen := f.Bool("listen", false, "also wake at once on NOTIFY "+relay.NotifyChannel+" from producers; polling continues")
	httpAddr := f.String("http", "", "serve /healthz, /readyz and /metrics on `ADDR`, e.g. 127.0.0.1:9090 (default off)")
	stallAfter := f.Duration("stall-after", time.Minute, "/readyz fails when due messages wait and the relay has made no progress for this long")
	var adm adminFlags
	adm.register(f, "admin", "also serve the admin pages under /admin/ (with --http)")
	janitorEvery := f.Duration("janitor-interval", time.Minute, "how often to forget handled message IDs past their dedup window (0: no janitor)")
	migrate := f.Bool("migrate", false, "apply pending schema migrations before starting")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	log, err := c.logger(f, g)
	if err != nil {
		return err
	}
	if *janitorEvery < 0 {
		return f.usageErr("--janitor-interval %s: negative", *janitorEvery)
	}
	addr, err := loopbackDefault(*httpAddr)
	if err != nil {
		return f.usageErr("--http: %v", err)
	}
	if *batchSize < 1 || *batchSize > relay.MaxBatchSize {
		return f.usageErr("--batch-size %d: want 1 to %d", *batchSize, relay.MaxBatchSize)
	}
	if *poll <= 0 {
		return f.usageErr("--poll-interval %s: want more than 0", *poll)
	}
	if *stallAfter <= 0 {
		return f.usageErr("--stall-after %s: want more than 0", *stallAfter)
	}
	var auth adminAuth
	if adm.on {
		if addr == "" {
			return f.usageErr("--admin: needs --http")
		}
		if auth, err = c.adminAuth(addr); err != nil {
			return f.usageErr("--admin: %v", err)
		}
	}
	cfg := relay.Config{
		BatchSize:       *batchSize,
		PollInterval:    *poll,
		MaxPollInterval: max(relay.DefaultMaxPollInterval, *poll),
		Listen:          *listen,
		Logger:          log,
	}

	// Connections: the relay, its listener, the janitor, /healthz pings and
	// /metrics queries.
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-relay", maxConns: 6})
	if err != nil {
		return err
	}
	defer closePool(pool, log)

	if *migrate {
		if err := schema.Migrate(ctx, pool); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	if err := checkSchema(ctx, pool); err != nil {
		return err
	}
	relayMetrics := metrics.NewRelays(metrics.Config{})
	if addr != "" {
		cfg.OnBatch = relayMetrics.OnBatch
	}
	r, err := relay.New(pool, cfg)
	if err != nil {
		return err
	}
	relayMetrics.Add(r)

	var ready atomic.Bool
	var srv *http.Server
	if addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("http: %w", err)
		}
		s := &server{pool: pool, relay: r, ready: &ready, started: time.Now(), stallAfter: *stallAfter,
			relayMetrics: relayMetrics, log: log}
		if adm.on {
			s.admin = newAdmin(adminConfig{pool: pool, base: "/admin", readOnly: adm.readOnly, auth: auth,
				relay: r, log: log})
		}
		srv = newHTTPServer(s.handler())
		log.Info("http listening", "addr", ln.Addr().String())
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http server failed", "err", err)
			}
		}()
	}

	var wg sync.WaitGroup
	wg.Go(func() { r.Run(ctx) })
	if *janitorEvery > 0 {
		j, err := inbox.NewJanitor(pool, inbox.JanitorConfig{Interval: *janitorEvery, Logger: log})
		if err != nil {
			return err
		}
		wg.Go(func() { j.Run(ctx) })
	}
	ready.Store(true)

	<-ctx.Done()
	ready.Store(false)
	log.Info("stopping: the batch in flight commits or rolls back")
	deadline, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownBudget)
	defer cancel()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-deadline.Done():
		log.Warn("relay did not stop in time; exiting anyway (its batch commits or rolls back whole)")
	}
	if srv != nil {
		httpCtx, cancel := context.WithTimeout(deadline, time.Second)
		defer cancel()
		if err := srv.Shutdown(httpCtx); err != nil {
			srv.Close()
		}
	}
	st := r.Stats()
	log.Info("stopped", "batches", st.Batches, "messages", st.Claimed, "deliveries", st.Delivered,
		"quarantined", st.Quarantined)
	return nil
}

// checkSchema fails unless every migration this binary knows is applied.
func checkSchema(ctx context.Context, pool *pgxpool.Pool) error {
	st, err := schema.Status(ctx, pool)
	if err != nil {
		return fmt.Errorf("check schema: %w", err)
	}
	for _, m := range st {
		if !m.Applied {
			return fmt.Errorf("schema migration %d (%s) is not applied: run 'postbox migrate up' or pass --migrate", m.Version, m.Name)
		}
	}
	return nil
}

// closePool closes the pool, giving up after a few seconds: a connection
// stuck on a dead network must not keep the process from exiting. Nothing
// is lost by that, since every batch is one statement.
func closePool(pool *pgxpool.Pool, log *slog.Logger) {
	done := make(chan struct{})
	go func() { pool.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		log.Warn("database pool did not close in time; exiting anyway")
	}
}

// loopbackDefault gives a listen address without a host the loopback host,
// so nothing is exposed beyond the machine unless asked for.
func loopbackDefault(addr string) (string, error) {
	if addr == "" {
		return "", nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}
