package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/postbox-dev/postbox/internal/metrics"
	"github.com/postbox-dev/postbox/relay"
	"github.com/postbox-dev/postbox/stats"
)

// healthTimeout bounds the database work of /healthz and /readyz; a
// scrape's is metrics.DefaultTimeout.
const healthTimeout = time.Second

// server is what `postbox relay --http` serves: /healthz, /readyz,
// /metrics, and with --admin the admin pages under /admin/.
type server struct {
	pool         *pgxpool.Pool
	relay        *relay.Relay
	ready        *atomic.Bool
	started      time.Time
	stallAfter   time.Duration   // /readyz fails past this without progress
	relayMetrics *metrics.Relays // the relay's counters, timestamps and batch durations
	admin        http.Handler    // nil without --admin
	log          *slog.Logger
}

// handler serves the endpoints.
func (s *server) handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		s.relayMetrics,
		// The backlog, the same for every relay on a database: alert on
		// it from one.
		metrics.NewDatabase(s.pool, metrics.DatabaseConfig{Logger: s.log}),
	)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, req *http.Request) {
		ctx, cancel := context.WithTimeout(req.Context(), healthTimeout)
		defer cancel()
		if err := s.pool.Ping(ctx); err != nil {
			s.log.Warn("health check: database does not answer", "err", err)
			http.Error(w, "database does not answer", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, req *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		if err := s.stalled(req.Context()); err != nil {
			s.log.Warn("readiness: relay stalled", "err", err)
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(s.log.Handler(), slog.LevelError),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4, // each scrape queries the database
	}))
	if s.admin != nil {
		mux.Handle("/admin/", http.StripPrefix("/admin", s.admin))
	}
	return mux
}

// newHTTPServer wraps a handler with the timeouts every endpoint gets.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
	}
}

// stalled says why the relay is not doing its job, or nil: due messages
// wait and either no relay statement has succeeded for stallAfter (the
// statements fail or hang), or statements succeed but this relay has moved
// nothing for stallAfter while the oldest due message has waited as long
// (another relay holds their partitions and is stuck). While the relay
// succeeds and moves messages, no query is made.
func (s *server) stalled(ctx context.Context) error {
	now := time.Now()
	since := func(t time.Time) time.Duration {
		if t.IsZero() {
			t = s.started
		}
		return now.Sub(t)
	}
	okAgo, movedAgo := since(s.relay.LastSuccess()), since(s.relay.LastMoved())
	if okAgo < s.stallAfter && movedAgo < s.stallAfter {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	b, err := stats.Outbox(ctx, s.pool)
	switch {
	case okAgo >= s.stallAfter && err != nil:
		return fmt.Errorf("no relay statement has succeeded for %s, and the outbox cannot be read: %v", okAgo.Round(time.Second), err)
	case okAgo >= s.stallAfter && b.Due.N > 0:
		return fmt.Errorf("no relay statement has succeeded for %s while %s due messages wait", okAgo.Round(time.Second), b.Due)
	case err != nil:
		return fmt.Errorf("the outbox cannot be read: %v", err)
	case b.Due.N > 0 && b.DueAge >= s.stallAfter:
		return fmt.Errorf("%s due messages wait, the oldest for %s, and this relay has moved none for %s (is another relay holding their partitions?)",
			b.Due, b.DueAge.Round(time.Second), movedAgo.Round(time.Second))
	}
	return nil
}
