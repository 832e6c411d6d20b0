package relay

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/headers"
)

// sinkOnce hands one batch to the Sink: claim under the relay-partition
// locks, deliver, delete, commit. A failed Deliver rolls back, so the batch
// stays in the outbox for the next try.
func (r *Relay) sinkOnce(ctx context.Context) (Result, error) {
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		r.errs.Add(1)
		return Result{}, fmt.Errorf("relay: sink: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	q := db.New(tx)
	rows, err := q.ClaimForSink(ctx, int32(r.cfg.BatchSize))
	if err != nil {
		r.errs.Add(1)
		return Result{}, fmt.Errorf("relay: sink: claim: %w", err)
	}
	if len(rows) == 0 {
		return Result{}, tx.Commit(ctx)
	}
	batch := make([]dispatcher.Envelope, len(rows))
	ids := make([]int64, len(rows))
	for i, row := range rows {
		batch[i] = envelope(row)
		ids[i] = row.ID
	}
	if err := r.cfg.Sink.Deliver(ctx, batch); err != nil {
		r.errs.Add(1)
		return Result{}, fmt.Errorf("relay: sink: deliver %d messages: %w", len(batch), err)
	}
	if _, err := q.DeleteOutbox(ctx, ids); err != nil {
		r.errs.Add(1)
		return Result{}, fmt.Errorf("relay: sink: delete: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		r.errs.Add(1)
		return Result{}, fmt.Errorf("relay: sink: commit: %w", err)
	}
	r.batches.Add(1)
	r.claimed.Add(int64(len(rows)))
	r.delivered.Add(int64(len(rows)))
	return Result{Claimed: len(rows), Delivered: len(rows)}, nil
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
