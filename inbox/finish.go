package inbox

import (
	"time"

	"github.com/postbox-dev/postbox/internal/db"
)

// finishParams turns the batch's outcomes into one postbox.finish_batch
// call. Per owned partition the cursor moves past the prefix of the
// partition's stream deliveries the batch dealt with, and only past that:
// a delivery after the first one not reached (the budget or ctx stopped
// the batch before it was run again, or it was handed back) is not
// reached either, whatever an earlier pass made of it, so the cursor never
// passes a delivery nothing was done with. A partition the batch owned but
// did nothing in keeps its cursor and only counts the batch (its epoch),
// so a claim read before cannot finish.
func (b *batch) finishParams() db.FinishBatchParams {
	p := db.FinishBatchParams{Subscriber: b.c.cfg.Subscriber, ParkOnDead: b.set.parkOnDead, Run: int32(b.c.cfg.BatchSize)}
	next := make(map[int16]int64, len(b.parts))
	for part, cur := range b.parts {
		next[part] = cur.nextSeq
	}
	gap := b.gaps()
	for _, e := range b.entries {
		if e.out == outNone || b.stopped(e) {
			continue // not reached, or behind a delivery handed back
		}
		if g, ok := gap[e.row.Part]; ok && e.stream() && e.row.Seq > g {
			// Handled deliveries come before the first gap (handling goes
			// in seq order and stops as a whole), so what is dropped here
			// is a failure an earlier pass kept, or a delivery it blocked:
			// nothing of theirs commits, and they are claimed again.
			continue
		}
		id := e.row.MessageID
		if e.stream() {
			next[e.row.Part] = max(next[e.row.Part], e.row.Seq+1)
		}
		switch e.out {
		case outHandled:
			p.Done = append(p.Done, id)
			if !e.stream() {
				p.Unpark = append(p.Unpark, id)
			}
		case outDuplicate:
			if !e.stream() {
				p.Unpark = append(p.Unpark, id)
			}
		case outBlocked:
			park(&p, e, "blocked", 0, 0, "")
		case outDelayed:
			park(&p, e, "delayed", 0, 0, "")
		case outFailed:
			switch {
			case e.fail.dead:
				p.DeadIds = append(p.DeadIds, id)
				p.DeadParked = append(p.DeadParked, !e.stream())
				p.DeadParts = append(p.DeadParts, e.row.Part)
				p.DeadSeqs = append(p.DeadSeqs, e.row.Seq)
				p.DeadAttempts = append(p.DeadAttempts, int32(e.fail.attempts))
				p.DeadErrors = append(p.DeadErrors, e.fail.err)
			case e.stream():
				park(&p, e, "retry", e.fail.attempts, e.fail.delay, e.fail.err)
			default:
				p.RetryIds = append(p.RetryIds, id)
				p.RetryAttempts = append(p.RetryAttempts, int32(e.fail.attempts))
				p.RetryDelaysMs = append(p.RetryDelaysMs, e.fail.delay.Milliseconds())
				p.RetryErrors = append(p.RetryErrors, e.fail.err)
			}
		}
	}
	for part, cur := range b.parts {
		p.Parts = append(p.Parts, part)
		p.NextSeqs = append(p.NextSeqs, next[part])
		p.Epochs = append(p.Epochs, cur.epoch)
	}
	return p
}

// gaps returns, per partition, the seq of its first stream delivery the
// batch did not reach (or handed back).
func (b *batch) gaps() map[int16]int64 {
	var gap map[int16]int64
	for _, e := range b.entries {
		if !e.stream() || (e.out != outNone && !b.stopped(e)) {
			continue
		}
		if gap == nil {
			gap = make(map[int16]int64)
		}
		if g, ok := gap[e.row.Part]; !ok || e.row.Seq < g {
			gap[e.row.Part] = e.row.Seq
		}
	}
	return gap
}

// park adds a stream delivery that must wait to p.
func park(p *db.FinishBatchParams, e *entry, reason string, attempts int, delay time.Duration, errText string) {
	p.ParkIds = append(p.ParkIds, e.row.MessageID)
	p.ParkParts = append(p.ParkParts, e.row.Part)
	p.ParkSeqs = append(p.ParkSeqs, e.row.Seq)
	p.ParkReasons = append(p.ParkReasons, reason)
	p.ParkAttempts = append(p.ParkAttempts, int32(attempts))
	p.ParkDelaysMs = append(p.ParkDelaysMs, delay.Milliseconds())
	p.ParkErrors = append(p.ParkErrors, errText)
}

// info is what the committed batch did, for Stats and Config.OnBatch.
func (b *batch) info() BatchInfo {
	in := BatchInfo{Subscriber: b.c.cfg.Subscriber, Claimed: b.claimed, Duration: time.Since(b.started)}
	for _, e := range b.entries {
		switch {
		case e.out == outHandled:
			in.Handled = append(in.Handled, e.d)
		case e.out == outDuplicate:
			in.Duplicates++
		case e.out == outFailed && e.fail.dead:
			in.Dead = append(in.Dead, e.d)
		case e.out == outFailed:
			in.Failed = append(in.Failed, e.d)
		}
	}
	return in
}

// count adds a committed batch to the consumer's counters and tells
// Config.OnBatch.
func (c *Consumer) count(b *batch) {
	in := b.info()
	if len(in.Handled)+len(in.Failed)+len(in.Dead)+in.Duplicates > 0 {
		c.batches.Add(1)
	}
	c.handled.Add(int64(len(in.Handled)))
	c.failed.Add(int64(len(in.Failed)))
	c.dead.Add(int64(len(in.Dead)))
	c.duplicates.Add(int64(in.Duplicates))
	if c.cfg.OnBatch != nil {
		c.cfg.OnBatch(in)
	}
}
