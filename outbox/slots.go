package outbox

import (
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// The outbox is partitioned into time slots (schema migration 2): the
// relay TRUNCATEs a slot it has emptied, which returns its space at once
// even while a long transaction keeps vacuum from removing deleted rows.
// Producers write straight into the slot of the moment. sqlc cannot name a
// partition from a parameter, so the statements are built here, once, from
// constant table names; routing every insert through the partitioned parent
// instead cost 3-5% of a one-message producer transaction (pgbench,
// docs/architecture.md). A producer whose clock is off picks another slot,
// which is always safe: a slot is truncated only when it is empty, checked
// under an exclusive lock.
const (
	slotCount   = 8  // as in postbox.outbox_slot()
	slotSeconds = 10 // as in postbox.outbox_slot()
	// keyLockClass is the first key of the per-key advisory lock
	// (the second is the key hash), as in the LockKeys query.
	keyLockClass = 1886352245
)

// slotAt is postbox.outbox_slot() for the time t.
func slotAt(t time.Time) int {
	return int(t.Unix() / slotSeconds % slotCount)
}

var (
	insertSQL      [slotCount]string // a message without a key
	insertKeyedSQL [slotCount]string // takes the key's lock first
	slotTable      [slotCount]pgx.Identifier
)

// copyColumns are the columns CopyFrom writes, in copyRow's order.
var copyColumns = []string{"slot", "message_id", "key_hash", "is_queue", "topic", "type", "key", "payload", "headers", "deliver_at"}

func init() {
	for s := range slotCount {
		table := fmt.Sprintf("postbox.outbox_%d", s)
		slotTable[s] = pgx.Identifier{"postbox", fmt.Sprintf("outbox_%d", s)}
		insertSQL[s] = fmt.Sprintf(`INSERT INTO %s (slot, message_id, key_hash, is_queue, topic, type, key, payload, headers, deliver_at)
VALUES (%d, $1, $2, $3, $4, $5, $6, $7, $8, $9)`, table, s)
		// The lock is taken in the same statement, before the INSERT draws
		// the id: one round trip, and per key the ids follow commit order.
		insertKeyedSQL[s] = fmt.Sprintf(`INSERT INTO %s (slot, message_id, key_hash, is_queue, topic, type, key, payload, headers, deliver_at)
SELECT %d, $1::uuid, $2::integer, $3::boolean, $4::text, $5::text, $6::text, $7::bytea, $8::jsonb, $9::timestamptz
FROM (SELECT pg_advisory_xact_lock(%d, $2::integer)) AS key_lock`, table, s, keyLockClass)
	}
}
