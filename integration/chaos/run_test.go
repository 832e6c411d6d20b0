package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// run is one chaos run: the fleet, the faults, and the watch for the end.
type run struct {
	t      *testing.T
	ctx    context.Context
	f      form
	url    string
	pinURL string
	pool   *pgxpool.Pool
	pg     *cluster
	fleet  *fleet
	start  time.Time

	producers []*proc
	relays    []*proc
	consumers []*proc

	terminated atomic.Int64
	storms     atomic.Int64
	restarts   atomic.Int64
	faultsDone atomic.Bool // every scheduled fault has happened

	mu       sync.Mutex
	timeline []string
	pin      pinReport
	faultErr []error
}

// pinReport is what the pin held back.
type pinReport struct {
	held         time.Duration
	xidsHeldBack int64 // transaction IDs the horizon fell behind while pinned
}

func newRun(t *testing.T, ctx context.Context, f form, url, pinURL string, pool *pgxpool.Pool, pg *cluster) *run {
	return &run{t: t, ctx: ctx, f: f, url: url, pinURL: pinURL, pool: pool, pg: pg, fleet: newFleet(t)}
}

func (r *run) note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.timeline = append(r.timeline, fmt.Sprintf("%7.1fs ", time.Since(r.start).Seconds())+fmt.Sprintf(format, args...))
}

func (r *run) faultFailed(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faultErr = append(r.faultErr, err)
}

// report is the outcome of a run.
type report struct {
	form       string
	elapsed    time.Duration
	converged  bool
	tally      tally
	kills      int64
	restarts   int64
	storms     int64
	terminated int64
	pin        pinReport
	produced   producerStats
	starts     int
	timeline   []string
	logs       string // warnings and errors the role processes logged
	diagnosis  string // why the run failed; empty when it passed
}

func (p report) failed() bool { return p.diagnosis != "" }

func (p report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "chaos %s form: %s\n", p.form, p.elapsed.Round(100*time.Millisecond))
	fmt.Fprintf(&b, "  faults: %d kills -9 (%d process starts), %d terminate storms ending %d backends, %d PostgreSQL restarts",
		p.kills, p.starts, p.storms, p.terminated, p.restarts)
	if p.pin.held > 0 {
		fmt.Fprintf(&b, ", horizon pinned %s (fell %d xids behind)", p.pin.held.Round(time.Second), p.pin.xidsHeldBack)
	}
	fmt.Fprintf(&b, "\n  producers: %d messages in %d transactions; %d tries failed and were retried, %d of them at COMMIT (ambiguous)\n",
		p.produced.Messages, p.produced.Txs, p.produced.Failures, p.produced.Ambiguous)
	b.WriteString(indent(p.tally.String(), "  "))
	if p.logs != "" {
		b.WriteString("\n  role logs: " + p.logs)
	}
	b.WriteString("\n  timeline:\n" + indent(strings.Join(p.timeline, "\n"), "    "))
	return b.String()
}

// execute runs the fleet and the faults until every expected effect has
// committed and postbox holds nothing pending, then stops everything and
// counts.
func (r *run) execute() report {
	f := r.f
	r.start = time.Now()
	for i := range f.relays {
		r.relays = append(r.relays, r.fleet.start("relay", roleParams{Name: fmt.Sprintf("relay-%d", i), URL: r.url,
			BatchSize: []int{100, 500, 1000}[i%3], Listen: i%2 == 0}))
	}
	for i := range f.consumers {
		r.consumers = append(r.consumers, r.fleet.start("consumer", roleParams{Name: fmt.Sprintf("consumer-%d", i),
			URL: r.url, Concurrency: f.concurrency}))
	}
	for i := range f.producers {
		var keys []int
		for k := i; k < f.keys; k += f.producers {
			keys = append(keys, k)
		}
		r.producers = append(r.producers, r.fleet.start("producer", roleParams{Name: fmt.Sprintf("producer-%d", i),
			URL: r.url, Keys: keys, PerKey: f.perKey, Workers: f.producerWorkers,
			Rate: f.rate / float64(f.producers), AmbiguousEvery: f.ambiguousEvery}))
	}
	r.note("started %d relays, %d consumers, %d producers", f.relays, f.consumers, f.producers)

	faultCtx, stopFaults := context.WithCancel(r.ctx)
	var faults sync.WaitGroup
	faults.Go(func() { r.faults(faultCtx) })

	converged, diagnosis := r.watch()
	stopFaults()
	faults.Wait()
	r.fleet.stop()
	rep := report{form: f.name, elapsed: time.Since(r.start), converged: converged,
		kills: r.fleet.kills.Load(), restarts: r.restarts.Load(), storms: r.storms.Load(),
		terminated: r.terminated.Load()}
	for _, p := range r.fleet.list {
		rep.starts += p.starts
	}
	for _, p := range r.producers {
		var s producerStats
		if err := json.Unmarshal(p.output, &s); err == nil {
			rep.produced.Messages += s.Messages
			rep.produced.Txs += s.Txs
			rep.produced.Failures += s.Failures
			rep.produced.Ambiguous += s.Ambiguous
		}
	}
	var warns, errs int
	for _, p := range r.fleet.list {
		warns += countLines(p.log, "level=WARN")
		errs += countLines(p.log, "level=ERROR")
	}
	if warns+errs > 0 {
		rep.logs = fmt.Sprintf("%d warnings, %d errors (logs in %s)", warns, errs, r.fleet.dir)
	}
	r.mu.Lock()
	rep.timeline, rep.pin = r.timeline, r.pin
	faultErrs := errors.Join(r.faultErr...)
	r.mu.Unlock()

	var problems []string
	if diagnosis != "" {
		problems = append(problems, diagnosis)
	}
	if faultErrs != nil {
		problems = append(problems, "a fault could not be injected: "+faultErrs.Error())
	}
	for _, e := range r.fleet.unexpectedExits() {
		problems = append(problems, "unexpected exit of "+e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t, err := readTally(ctx, r.pool)
	rep.tally = t
	switch {
	case err != nil:
		problems = append(problems, err.Error())
	case t.lost+t.duplicated+t.outOfOrder+t.unexpected+t.dead > 0:
		problems = append(problems, "the ledger is wrong:\n"+indent(t.String(), "  ")+"\n"+
			indent(keyHistories(ctx, r.pool), "  "))
	case t.sent != int64(f.messages()):
		problems = append(problems, fmt.Sprintf("the producers committed %d messages, want %d", t.sent, f.messages()))
	case rep.kills < int64(f.minKills):
		problems = append(problems, fmt.Sprintf("%d kills, want at least %d", rep.kills, f.minKills))
	}
	if f.stormFor > 0 && rep.terminated == 0 {
		problems = append(problems, "the terminate storms ended no backend")
	}
	rep.diagnosis = strings.Join(problems, "\n")
	return rep
}

// faults runs the kills, the storms, the pin and the restart, each on its
// schedule, and marks faultsDone once all have happened.
func (r *run) faults(ctx context.Context) {
	f := r.f
	var wg sync.WaitGroup
	var killsDone, stormsDone, pinDone, restartDone atomic.Bool
	wg.Go(func() { r.kills(ctx); killsDone.Store(true) })
	wg.Go(func() { r.stormSchedule(ctx); stormsDone.Store(true) })
	if f.pinFor > 0 {
		wg.Go(func() { r.pinHorizon(ctx); pinDone.Store(true) })
	} else {
		pinDone.Store(true)
	}
	if f.restartAt > 0 {
		wg.Go(func() {
			if sleep(ctx, time.Until(r.start.Add(f.restartAt))) {
				r.restart(ctx)
			}
			restartDone.Store(true)
		})
	} else {
		restartDone.Store(true)
	}
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for !(killsDone.Load() && stormsDone.Load() && pinDone.Load() && restartDone.Load()) {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
		r.faultsDone.Store(true)
		r.note("every fault done")
	})
	wg.Wait()
}

// producersDone reports whether every producer has finished.
func (r *run) producersDone() bool {
	for _, p := range r.producers {
		select {
		case <-p.done:
		default:
			return false
		}
	}
	return true
}

// kills kills a random relay or consumer process every killEvery (±50%)
// until the producers are done and at least minKills happened.
func (r *run) kills(ctx context.Context) {
	f := r.f
	if !sleep(ctx, f.killFrom) {
		return
	}
	targets := r.fleet.killable()
	for !(r.producersDone() && r.fleet.kills.Load() >= int64(f.minKills)) {
		p := targets[rand.IntN(len(targets))]
		if r.fleet.kill(p) {
			r.note("kill -9 %s", p.params.Name)
		}
		if !sleep(ctx, f.killEvery/2+rand.N(f.killEvery)) {
			return
		}
	}
	r.note("kills done: %d", r.fleet.kills.Load())
}

func (r *run) stormSchedule(ctx context.Context) {
	f := r.f
	if f.stormFor <= 0 {
		return
	}
	at := f.stormFrom
	for {
		if !sleep(ctx, time.Until(r.start.Add(at))) {
			return
		}
		r.storm(ctx, f.stormFor)
		if f.stormEvery <= 0 || r.producersDone() {
			return
		}
		at += f.stormEvery
	}
}

// storm ends every session of the role processes, again and again, for d.
func (r *run) storm(ctx context.Context, d time.Duration) {
	r.storms.Add(1)
	end := time.Now().Add(d)
	var n, rounds int64
	var lastErr error
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(end) {
		var k int64
		err := r.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
			FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE $1`,
			appRole+"%").Scan(&k)
		if err == nil {
			n += k
			rounds++
		} else {
			lastErr = err // the test's own session may be gone for a moment (a restart)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
	if rounds == 0 {
		r.faultFailed(fmt.Errorf("terminate storm: no round succeeded: %w", lastErr))
	}
	r.terminated.Add(n)
	r.note("terminate storm of %s: %d backends ended", d, n)
}

// restart crashes PostgreSQL and starts it again.
func (r *run) restart(ctx context.Context) {
	r.note("PostgreSQL restart (immediate: crash and recovery)")
	began := time.Now()
	if err := r.pg.restart(); err != nil {
		r.faultFailed(err)
		return
	}
	if err := r.pg.waitUp(ctx, time.Minute); err != nil {
		r.faultFailed(err)
		return
	}
	r.restarts.Add(1)
	r.note("PostgreSQL up again after %s", time.Since(began).Round(time.Millisecond))
}

// pinHorizon holds a REPEATABLE READ transaction with a transaction ID open
// in another database of the cluster from pinFrom for pinFor: vacuum can
// then remove nothing deleted after it began, anywhere in the cluster.
func (r *run) pinHorizon(ctx context.Context) {
	f := r.f
	if !sleep(ctx, time.Until(r.start.Add(f.pinFrom))) {
		return
	}
	conn, err := pgx.Connect(ctx, r.pinURL)
	if err != nil {
		r.faultFailed(fmt.Errorf("pin: %w", err))
		return
	}
	defer conn.Close(context.Background())
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		r.faultFailed(fmt.Errorf("pin: %w", err))
		return
	}
	var xid, pid int64
	if err := tx.QueryRow(ctx, `SELECT txid_current(), pg_backend_pid()`).Scan(&xid, &pid); err != nil {
		r.faultFailed(fmt.Errorf("pin: %w", err))
		return
	}
	var pinned bool
	if err := r.pool.QueryRow(ctx, `SELECT backend_xmin IS NOT NULL FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&pinned); err != nil || !pinned {
		r.faultFailed(fmt.Errorf("pin: the pinning session holds no xmin (%v)", err))
		return
	}
	began := time.Now()
	r.note("horizon pinned by xid %d (pid %d, database of its own)", xid, pid)
	sleep(ctx, f.pinFor)
	var behind int64
	_ = r.pool.QueryRow(context.WithoutCancel(ctx), `SELECT txid_current() - $1`, xid).Scan(&behind)
	_ = tx.Rollback(context.WithoutCancel(ctx))
	r.mu.Lock()
	r.pin = pinReport{held: time.Since(began), xidsHeldBack: behind}
	r.mu.Unlock()
	r.note("horizon released after %s; %d xids behind", time.Since(began).Round(time.Second), behind)
}

// watch polls progress until the run is complete: the producers done, every
// fault done, every expected effect committed, and nothing pending in
// postbox. It returns a diagnosis when the run stalls or times out.
func (r *run) watch() (bool, string) {
	f := r.f
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var expected int64 = -1
	var last progress
	lastChange := time.Now()
	for {
		select {
		case <-r.ctx.Done():
			return false, "the run did not finish in time:\n" + r.diagnose(expected, last)
		case <-tick.C:
		}
		p, err := readProgress(r.ctx, r.pool)
		if err != nil {
			if time.Since(lastChange) > f.stallAfter {
				return false, fmt.Sprintf("progress unreadable for %s: %v", f.stallAfter, err)
			}
			continue
		}
		// Only work that waits can stall: once everything is handled, the
		// run only waits for the scheduled faults to be over.
		idle := expected >= 0 && p.effects >= expected && p.outbox+p.stream+p.parked == 0
		if p != last || idle {
			last, lastChange = p, time.Now()
		}
		if expected < 0 && r.producersDone() {
			if err := r.pool.QueryRow(r.ctx, `SELECT count(*) FROM (`+sqlExpected+`) e`).Scan(&expected); err != nil {
				continue
			}
			r.note("producers done; %d effects expected", expected)
		}
		if p.dead > 0 {
			return false, fmt.Sprintf("%d dead letters", p.dead)
		}
		if expected >= 0 && r.faultsDone.Load() && p.effects >= expected && p.outbox+p.stream+p.parked == 0 {
			r.note("all %d effects committed, nothing pending", p.effects)
			return true, ""
		}
		if time.Since(lastChange) > f.stallAfter {
			return false, fmt.Sprintf("stalled: nothing changed for %s:\n%s", f.stallAfter, r.diagnose(expected, p))
		}
	}
}

// diagnose describes where the run stands, for a stall.
func (r *run) diagnose(expected int64, p progress) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var b strings.Builder
	fmt.Fprintf(&b, "effects %d of %d expected; outbox %d, stream pending %d, parked %d, dead %d\n",
		p.effects, expected, p.outbox, p.stream, p.parked, p.dead)
	queries := []struct{ title, sql string }{
		{"queue depths", `SELECT format('%s ready %s waiting %s dead %s oldest %s', subscriber, ready, waiting, dead, oldest_pending) FROM postbox.queue_depths`},
		{"parked", `SELECT format('%s %s %s: %s (attempts %s, due %s) %s', subscriber, key, reason, count(*), max(attempts), min(available_at), max(last_error)) FROM postbox.parked GROUP BY subscriber, key, reason ORDER BY 1 LIMIT 20`},
		{"cursors behind", `SELECT format('%s part %s next_seq %s epoch %s: %s rows pending', c.subscriber, c.part, c.next_seq, c.epoch, count(r.seq)) FROM postbox.inbox_cursors c JOIN postbox.inbox r ON r.subscriber = c.subscriber AND r.part = c.part AND r.seq >= c.next_seq GROUP BY c.subscriber, c.part, c.next_seq, c.epoch ORDER BY 1 LIMIT 20`},
		{"sessions", `SELECT format('%s pid %s %s wait %s/%s xact %s: %s', application_name, pid, state, wait_event_type, wait_event, now() - xact_start, left(query, 120)) FROM pg_stat_activity WHERE datname = current_database() ORDER BY application_name`},
		{"locks", `SELECT format('%s %s %s granted %s pid %s', locktype, objid, mode, granted, pid) FROM pg_locks WHERE locktype = 'advisory' ORDER BY pid LIMIT 40`},
	}
	for _, q := range queries {
		rows, err := r.pool.Query(ctx, q.sql)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", q.title, err)
			continue
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", q.title, err)
			continue
		}
		fmt.Fprintf(&b, "%s:\n%s\n", q.title, indent(strings.Join(lines, "\n"), "  "))
	}
	for _, pr := range r.fleet.list {
		fmt.Fprintf(&b, "log of %s:\n%s\n", pr.params.Name, indent(tail(pr.log, 8), "  "))
	}
	return b.String()
}

// sleep waits d or until ctx ends, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
