package db

// Written by hand, not by sqlc: sqlc cannot send two of its queries in one
// round trip. Keep the Scan below in step with RelayBatchRow.

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// BatchSender sends a pgx.Batch: *pgxpool.Pool, *pgx.Conn and pgx.Tx do.
type BatchSender interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// RelayBatchNoJIT runs RelayNoJIT and RelayBatch as one pipeline: one round
// trip, one implicit transaction, so the setting holds for the relay
// statement and ends with it.
func RelayBatchNoJIT(ctx context.Context, db BatchSender, batchSize int32) (RelayBatchRow, error) {
	var i RelayBatchRow
	b := &pgx.Batch{}
	b.Queue(relayNoJIT)
	b.Queue(relayBatch, batchSize).QueryRow(func(row pgx.Row) error {
		return row.Scan(&i.Claimed, &i.Delivered, &i.Duplicates, &i.NoRoute, &i.Unrouted, &i.Woken, &i.Partitions)
	})
	err := db.SendBatch(ctx, b).Close()
	return i, err
}
