package main

import (
	"context"
	"fmt"
	"io"
	"math"

	"github.com/postbox-dev/postbox/internal/db"
)

// statsReport is what `postbox stats --json` prints.
type statsReport struct {
	Subscribers []subscriberStats `json:"subscribers"`
	Outbox      outboxStats       `json:"outbox"`
}

type subscriberStats struct {
	Subscriber string `json:"subscriber"`
	// Kind is queue, topic, or undeclared for a name that is not declared
	// but has waiting deliveries or dead letters: sends to a missing queue,
	// what a dropped subscriber left, and the relay's quarantine (_relay).
	Kind                 string  `json:"kind"`
	Pending              int64   `json:"pending"`    // ready to be claimed now
	InBackoff            int64   `json:"in_backoff"` // waiting: for a retry, a delayed delivery time, or behind its key
	Dead                 int64   `json:"dead"`       // dead letters
	OldestPendingSeconds float64 `json:"oldest_pending_seconds"`
}

type outboxStats struct {
	Waiting       int64   `json:"waiting"`
	OldestSeconds float64 `json:"oldest_seconds"`
}

func (c *cli) stats(ctx context.Context, args []string) error {
	f := newFlags("stats", "postbox stats [flags]", `
Show, per subscriber, the deliveries pending (claimable now), in backoff
(waiting for a retry, a delayed delivery time, or behind an earlier message
of their key) and dead, with the age of the oldest pending one; and the
outbox backlog the relay has yet to move. Names that are not declared are
listed as undeclared when they have dead letters or waiting deliveries (sends
to a missing queue; _relay, the outbox rows the relay could not move).
Counting reads every pending delivery: on a very large backlog it takes a
while.`)
	g := f.common()
	asJSON := f.Bool("json", false, "print JSON instead of a table")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	if _, err := c.logger(f, g); err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-stats"})
	if err != nil {
		return err
	}
	defer pool.Close()

	q := db.New(pool)
	depths, err := q.QueueDepths(ctx)
	if err != nil {
		return fmt.Errorf("stats: queue depths: %w", err)
	}
	backlog, err := q.OutboxBacklog(ctx, math.MaxInt32)
	if err != nil {
		return fmt.Errorf("stats: outbox backlog: %w", err)
	}
	rep := statsReport{
		Subscribers: make([]subscriberStats, len(depths)),
		Outbox:      outboxStats{Waiting: backlog.Waiting, OldestSeconds: backlog.OldestSeconds},
	}
	for i, d := range depths {
		rep.Subscribers[i] = subscriberStats{
			Subscriber: d.Subscriber, Kind: d.Kind,
			Pending: d.Ready, InBackoff: d.Waiting, Dead: d.Dead,
			OldestPendingSeconds: d.OldestPendingSeconds,
		}
	}
	if *asJSON {
		return writeJSON(c.stdout, rep)
	}
	err = writeTable(c.stdout, func(w io.Writer) {
		fmt.Fprintln(w, "SUBSCRIBER\tKIND\tPENDING\tIN BACKOFF\tDEAD\tOLDEST PENDING")
		for _, s := range rep.Subscribers {
			fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%s\n", s.Subscriber, s.Kind, s.Pending, s.InBackoff, s.Dead, age(s.OldestPendingSeconds))
		}
	})
	if err != nil {
		return err
	}
	if len(rep.Subscribers) == 0 {
		fmt.Fprintln(c.stdout, "(no subscribers)")
	}
	_, err = fmt.Fprintf(c.stdout, "\noutbox: %d waiting, oldest %s\n", rep.Outbox.Waiting, age(rep.Outbox.OldestSeconds))
	return err
}
