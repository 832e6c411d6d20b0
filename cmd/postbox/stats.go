package main

import (
	"context"
	"fmt"
	"io"

	"github.com/postbox-dev/postbox/stats"
)

// statsReport is what `postbox stats --json` prints.
type statsReport struct {
	Subscribers []subscriberStats `json:"subscribers"`
	Outbox      outboxStats       `json:"outbox"`
}

// subscriberStats is one subscriber's line. Counts are exact up to --cap
// rows per subscriber and source; past it they are estimates, and
// Estimated lists which.
type subscriberStats struct {
	Subscriber string `json:"subscriber"`
	// Kind is queue, topic, or undeclared for a name that is not declared
	// but has waiting deliveries or dead letters: sends to a missing queue,
	// what a dropped subscriber left, and the relay's quarantine (_relay).
	Kind                 string   `json:"kind"`
	Ready                int64    `json:"ready"`      // may be handled now
	Waiting              int64    `json:"waiting"`    // in_backoff + delayed + blocked
	InBackoff            int64    `json:"in_backoff"` // failed, waiting for the next attempt
	Delayed              int64    `json:"delayed"`    // waiting for their DeliverAt
	Blocked              int64    `json:"blocked"`    // waiting behind their key's head
	Dead                 int64    `json:"dead"`       // dead letters
	OldestPendingSeconds float64  `json:"oldest_pending_seconds"`
	HandledPerMinute     float64  `json:"handled_per_minute"`
	Estimated            []string `json:"estimated,omitempty"`
}

type outboxStats struct {
	Pending       int64   `json:"pending"`
	Due           int64   `json:"due"`
	OldestSeconds float64 `json:"oldest_seconds"`
	Estimated     bool    `json:"estimated,omitempty"`
}

func (c *cli) stats(ctx context.Context, args []string) error {
	f := newFlags("stats", "postbox stats [flags]", `
Show, per subscriber, the deliveries ready (may be handled now), waiting (in
backoff after a failure, delayed until their delivery time, or blocked behind
an earlier message of their key) and dead, the age of the oldest pending one,
and how many were handled per minute over the last minute; and the outbox
backlog the relay has yet to move. Names that are not declared are listed as
undeclared when they have dead letters or waiting deliveries (sends to a
missing queue; _relay, the outbox rows the relay could not move).

It takes the same bounded time whatever the backlog: counts are exact up to
--cap rows per subscriber and kind, and estimated past it (shown with a
leading ~, and listed under "estimated" in --json).`)
	g := f.common()
	asJSON := f.Bool("json", false, "print JSON instead of a table")
	limit := f.Int("cap", stats.DefaultCap, "count exactly up to this many rows per subscriber and kind, estimate past it")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	if *limit < 1 {
		return f.usageErr("--cap %d: want at least 1", *limit)
	}
	if _, err := c.logger(f, g); err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-stats"})
	if err != nil {
		return err
	}
	defer pool.Close()

	ov, err := stats.Options{Cap: *limit}.Read(ctx, pool)
	if err != nil {
		return err
	}
	rep := newStatsReport(ov)
	if *asJSON {
		return writeJSON(c.stdout, rep)
	}
	err = writeTable(c.stdout, func(w io.Writer) {
		fmt.Fprintln(w, "SUBSCRIBER\tKIND\tREADY\tWAITING\tIN BACKOFF\tDELAYED\tBLOCKED\tDEAD\tOLDEST PENDING\tHANDLED/MIN")
		for i, s := range rep.Subscribers {
			o := ov.Subscribers[i]
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cell(s.Subscriber, 60), s.Kind,
				o.Ready, o.Waiting, o.InBackoff, o.Delayed, o.Blocked, o.Dead,
				age(s.OldestPendingSeconds), rate(s.HandledPerMinute, o.HandledExact))
		}
	})
	if err != nil {
		return err
	}
	if len(rep.Subscribers) == 0 {
		fmt.Fprintln(c.stdout, "(no subscribers)")
	}
	_, err = fmt.Fprintf(c.stdout, "\noutbox: %s pending, %s due, oldest %s\n",
		ov.Outbox.Pending, ov.Outbox.Due, age(rep.Outbox.OldestSeconds))
	return err
}

func newStatsReport(ov stats.Overview) statsReport {
	rep := statsReport{
		Subscribers: make([]subscriberStats, len(ov.Subscribers)),
		Outbox: outboxStats{
			Pending: ov.Outbox.Pending.N, Due: ov.Outbox.Due.N, OldestSeconds: ov.Outbox.Age.Seconds(),
			Estimated: !ov.Outbox.Pending.Exact,
		},
	}
	for i, s := range ov.Subscribers {
		r := subscriberStats{
			Subscriber: s.Name, Kind: s.Kind,
			Ready: s.Ready.N, Waiting: s.Waiting.N, InBackoff: s.InBackoff.N, Delayed: s.Delayed.N,
			Blocked: s.Blocked.N, Dead: s.Dead.N,
			OldestPendingSeconds: s.Lag.Seconds(), HandledPerMinute: s.HandledPerMinute,
		}
		for _, e := range []struct {
			name  string
			exact bool
		}{
			{"ready", s.Ready.Exact}, {"in_backoff", s.InBackoff.Exact}, {"delayed", s.Delayed.Exact},
			{"blocked", s.Blocked.Exact}, {"dead", s.Dead.Exact}, {"oldest_pending_seconds", s.LagExact},
			{"handled_per_minute", s.HandledExact},
		} {
			if !e.exact {
				r.Estimated = append(r.Estimated, e.name)
			}
		}
		rep.Subscribers[i] = r
	}
	return rep
}

// rate formats a per-minute rate for a table; "≥" marks a lower bound.
func rate(perMinute float64, exact bool) string {
	s := fmt.Sprintf("%.0f", perMinute)
	if !exact {
		s = "≥" + s
	}
	return s
}
