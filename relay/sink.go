package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/headers"
	"github.com/postbox-dev/postbox/internal/pgtext"
)

// sinkState is where the Sink path is: the next relay partition to try,
// and the message that failed alone last and how often.
type sinkState struct {
	next int
	// failedID is the message refused alone failures times in a row, the
	// first time at failedAt.
	failedID int64
	failures int
	failedAt time.Time
}

// maxSinkAttempts bounds how often one message is handed to a sink that
// refuses it alone before it is quarantined (a dead letter of "_relay"),
// provided that took at least maxSinkAttempts × SinkTimeout.
const maxSinkAttempts = 5

// sinkOnce hands one batch of one relay partition to the Sink. The
// partition is held with a session lock on a connection of its own while
// the sink delivers, so no transaction stays open across network I/O (a
// hung sink never holds back vacuum), and a sink that hangs holds only that
// partition: other relays move the rest. Rows are deleted only after
// Deliver returned nil; a Deliver that fails or times out leaves them for
// the next try, so delivery is at least once and a message ID may reach the
// sink again (a sink that deduplicates by ID makes that harmless).
func (r *Relay) sinkOnce(ctx context.Context) (Result, error) {
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		r.errs.Add(1)
		return Result{}, fmt.Errorf("relay: sink: acquire: %w", err)
	}
	defer conn.Release()
	q := db.New(conn)
	marks := r.marks.forStatement(&r.sweepAt) // now and then from each partition's start
	for range partitions {
		part := r.sink.next
		r.sink.next = (r.sink.next + 1) % partitions
		locked, err := q.TryLockRelayPartition(ctx, int32(part))
		if err != nil {
			r.errs.Add(1)
			return Result{}, fmt.Errorf("relay: sink: lock partition %d: %w", part, err)
		}
		if !locked {
			continue // another relay has it
		}
		res, err := r.sinkPartition(ctx, q, part, marks[part])
		if _, uerr := q.UnlockRelayPartition(context.WithoutCancel(ctx), int32(part)); uerr != nil {
			// The lock must not outlive this use of the connection.
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
		if err != nil {
			if ctx.Err() == nil {
				r.errs.Add(1)
			}
			return Result{}, err
		}
		r.count(res)
		if res.Claimed > 0 {
			return res, nil
		}
	}
	r.lastOK.Store(time.Now().UnixNano())
	return Result{}, nil
}

func (r *Relay) sinkPartition(ctx context.Context, q *db.Queries, part int, after int64) (Result, error) {
	cleared, err := r.horizon.check(ctx, q)
	if err != nil {
		return Result{}, fmt.Errorf("relay: sink: horizon: %w", err)
	}
	rows, err := q.SinkClaim(ctx, db.SinkClaimParams{Part: int32(part), AfterID: after, BatchSize: int32(r.size)})
	if err != nil {
		return Result{}, fmt.Errorf("relay: sink: claim partition %d: %w", part, err)
	}
	if len(rows) == 0 {
		return Result{}, nil
	}
	batch := make([]dispatcher.Envelope, len(rows))
	ids := make([]int64, len(rows))
	slots := make([]int16, len(rows))
	for i, row := range rows {
		batch[i] = envelope(row)
		ids[i], slots[i] = row.ID, row.Slot
	}
	dctx, cancel := context.WithTimeout(ctx, r.cfg.SinkTimeout)
	started := time.Now()
	err = r.cfg.Sink.Deliver(dctx, batch)
	took := time.Since(started)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return Result{}, ctx.Err()
		}
		return r.sinkFailed(ctx, q, rows, err)
	}
	full := len(rows) >= r.size
	r.size = min(2*r.size, r.cfg.BatchSize)
	if _, err := q.DeleteOutbox(context.WithoutCancel(ctx), db.DeleteOutboxParams{Slots: slots, Ids: ids}); err != nil {
		return Result{}, fmt.Errorf("relay: sink: delete %d delivered messages: %w", len(ids), err)
	}
	// The claim looked at a window of rows and scheduled the ones not yet
	// due: what lies past the last row delivered is unseen, so the mark
	// goes no further (full), whatever the horizon.
	r.marks.advance([]int16{int16(part)}, cleared, true, ids[len(ids)-1])
	res := Result{Claimed: len(rows), Delivered: len(rows), More: full}
	if r.cfg.OnBatch != nil {
		var tps []string
		for _, e := range batch {
			if tp := e.Headers[postbox.HeaderTraceParent]; tp != "" {
				tps = append(tps, tp)
			}
		}
		r.cfg.OnBatch(BatchInfo{Result: res, Traceparents: tps, Duration: took})
	}
	return res, nil
}

// sinkFailed handles a Deliver error: a batch that keeps failing is tried
// smaller, so one message the sink refuses cannot hold back the others.
// That message, once alone, is quarantined at once when the sink calls the
// refusal permanent (postbox.Permanent), or after maxSinkAttempts refusals
// in a row spread over at least maxSinkAttempts × SinkTimeout, so that a
// short broker outage quarantines nothing (a long one still does: a sink
// cannot tell its outage from a message it cannot take).
func (r *Relay) sinkFailed(ctx context.Context, q *db.Queries, rows []db.PostboxOutbox, err error) (Result, error) {
	err = fmt.Errorf("relay: sink: deliver %d messages: %w", len(rows), err)
	if len(rows) > 1 {
		r.size = max(1, len(rows)/2)
		return Result{}, err
	}
	if r.sink.failedID != rows[0].ID {
		r.sink.failedID, r.sink.failures, r.sink.failedAt = rows[0].ID, 0, time.Now()
	}
	r.sink.failures++
	refused := postbox.IsPermanent(err) || (r.sink.failures >= maxSinkAttempts &&
		time.Since(r.sink.failedAt) >= maxSinkAttempts*r.cfg.SinkTimeout)
	if !refused {
		return Result{}, err
	}
	moved, qerr := q.QuarantineOutbox(context.WithoutCancel(ctx), db.QuarantineOutboxParams{
		ID: rows[0].ID, Error: pgtext.Clean(err.Error(), pgtext.MaxErrorBytes)})
	if qerr != nil || !moved {
		return Result{}, err
	}
	r.cfg.Logger.Error("relay quarantined a message the sink refused; it is a dead letter of _relay",
		"outbox_id", rows[0].ID, "message_id", uuid.UUID(rows[0].MessageID.Bytes), "attempts", r.sink.failures, "err", err)
	r.sink.failedID, r.sink.failures = 0, 0
	r.size = r.cfg.BatchSize
	return Result{Quarantined: 1}, nil
}

func envelope(row db.PostboxOutbox) dispatcher.Envelope {
	e := dispatcher.Envelope{
		Message: postbox.Message{
			ID:        uuid.UUID(row.MessageID.Bytes),
			Topic:     row.Topic,
			Type:      row.Type,
			Payload:   row.Payload,
			CreatedAt: row.CreatedAt,
		},
		Queue:   row.IsQueue,
		KeyHash: row.KeyHash,
	}
	if row.Key != nil {
		e.Key = *row.Key
	}
	if row.DeliverAt != nil {
		e.DeliverAt = *row.DeliverAt
	}
	// Not a JSON object only if written by hand in SQL: no headers then.
	e.Headers, _ = headers.Decode(row.Headers)
	return e
}
