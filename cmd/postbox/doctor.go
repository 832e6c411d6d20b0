package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/dlq"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/stats"
)

const doctorHelp = `
Check the database for what will hurt postbox, before it does, and print a
line per check: "ok" or, for each problem found, "FAIL" and what it is. Exit
status 1 when any check finds a problem (or cannot run), 0 when all pass.

  long-transactions  transactions open longer than --xact-age that hold the
                     xmin horizon back (with pid, application, age, query),
                     and prepared transactions as old
  dead-tuples        postbox tables with more than --dead-tuples dead rows
                     that are more than --dead-ratio of the table, with their
                     last (auto)vacuum
  bloat              postbox tables over --bloat-min-size whose live rows
                     fill less than --bloat-fill of them
  relay              due outbox messages waiting longer than --relay-lag: no
                     relay is moving them
  consumers          subscribers with ready deliveries, the oldest pending
                     for longer than --lag, and none handled in the last
                     minute: no consumer is running
  blocked-keys       keys whose head has failed --key-attempts times or more,
                     or waits behind a dead letter, holding their later
                     messages back
  no-route           dead letters of sends to a queue that is not declared
  quarantine         outbox rows the relay could not move (dead letters of
                     ` + dlq.Relay + `)
  dropped-topics     topics in the outbox no subscription matches (the relay
                     drops them; postbox_relay_unrouted_total counts them)
  replication-slots  slots keeping more than --slot-wal of WAL, or inactive
                     ones holding the xmin horizon back
  timeouts           idle_in_transaction_session_timeout or
                     transaction_timeout (the session's, or set for a role
                     or this database) below --batch-budget, the consumers'
                     inbox.Config.BatchBudget
  autovacuum         autovacuum off on the server, or for a postbox table

Run it as a member of pg_monitor (postbox_operator is one) to see other
roles' transactions. --skip leaves checks out, e.g. --skip autovacuum on a
test server that runs without it.`

// doctorChecks are the checks, in the order they run and print.
var doctorChecks = []string{
	"long-transactions", "dead-tuples", "bloat", "relay", "consumers", "blocked-keys", "no-route",
	"quarantine", "dropped-topics", "replication-slots", "timeouts", "autovacuum",
}

// doctorOptions are the thresholds.
type doctorOptions struct {
	xactAge, relayLag, lag, batchBudget time.Duration
	deadTuples                          int64
	deadRatio, bloatFill                float64
	bloatMinSize, slotWAL               byteSize
	keyAttempts                         int
	skip                                map[string]bool
}

// finding is one problem a check found.
type finding struct {
	Message string         `json:"message"`
	Detail  map[string]any `json:"detail,omitempty"`
}

// checkResult is one check's outcome, as --json prints it.
type checkResult struct {
	Check    string    `json:"check"`
	OK       bool      `json:"ok"`
	Skipped  bool      `json:"skipped,omitempty"`
	Summary  string    `json:"summary,omitempty"` // what was checked, when it passed
	Problems []finding `json:"problems,omitempty"`
	Notes    []string  `json:"notes,omitempty"`
	Error    string    `json:"error,omitempty"` // the check could not run
}

type doctorReport struct {
	OK     bool          `json:"ok"`
	Checks []checkResult `json:"checks"`
}

// errProblems makes the command exit 1 once the report is printed.
var errProblems = errors.New("doctor found problems")

func (c *cli) doctor(ctx context.Context, args []string) error {
	f := newFlags("doctor", "postbox doctor [flags]", doctorHelp)
	g := f.common()
	var o doctorOptions
	asJSON := f.Bool("json", false, "print JSON instead of lines")
	f.DurationVar(&o.xactAge, "xact-age", time.Minute, "oldest transaction allowed to hold the xmin horizon")
	f.Int64Var(&o.deadTuples, "dead-tuples", 10_000, "dead rows a table may hold before the ratio matters")
	f.Float64Var(&o.deadRatio, "dead-ratio", 0.2, "largest share of dead rows in a table")
	o.bloatMinSize = 64 << 20
	f.Var(&o.bloatMinSize, "bloat-min-size", "tables smaller than this are never called bloated (bytes, or with kB, MB, GB)")
	f.Float64Var(&o.bloatFill, "bloat-fill", 0.25, "smallest share of a table its live rows should fill")
	f.DurationVar(&o.relayLag, "relay-lag", time.Minute, "longest a due outbox message may wait for a relay")
	f.DurationVar(&o.lag, "lag", 5*time.Minute, "longest a subscriber's oldest pending delivery may wait while none is handled")
	f.IntVar(&o.keyAttempts, "key-attempts", 3, "failed attempts of a key's head that count as blocking the key")
	o.slotWAL = 1 << 30
	f.Var(&o.slotWAL, "slot-wal", "most WAL a replication slot may keep (bytes, or with kB, MB, GB)")
	f.DurationVar(&o.batchBudget, "batch-budget", inbox.DefaultBatchBudget, "the consumers' BatchBudget: transaction timeouts must exceed it")
	skip := f.String("skip", "", "comma-separated checks to leave out")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	o.skip = map[string]bool{}
	for name := range strings.SplitSeq(*skip, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		if !slices.Contains(doctorChecks, name) {
			return f.usageErr("--skip %q: no such check (want %s)", name, strings.Join(doctorChecks, ", "))
		}
		o.skip[name] = true
	}
	for name, d := range map[string]time.Duration{"xact-age": o.xactAge, "relay-lag": o.relayLag, "lag": o.lag, "batch-budget": o.batchBudget} {
		if d <= 0 {
			return f.usageErr("--%s %s: want more than 0", name, d)
		}
	}
	if o.deadRatio < 0 || o.deadRatio > 1 || o.bloatFill < 0 || o.bloatFill > 1 {
		return f.usageErr("--dead-ratio and --bloat-fill: want 0 to 1")
	}
	if o.keyAttempts < 1 {
		return f.usageErr("--key-attempts %d: want at least 1", o.keyAttempts)
	}
	if _, err := c.logger(f, g); err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-doctor"})
	if err != nil {
		return err
	}
	defer pool.Close()

	rep := runDoctor(ctx, pool, o)
	if *asJSON {
		if err := writeJSON(c.stdout, rep); err != nil {
			return err
		}
	} else {
		writeDoctor(c.stdout, rep)
	}
	if !rep.OK {
		return errQuiet{errProblems}
	}
	return nil
}

// errQuiet is a failure already reported on stdout: exit 1, nothing more
// on stderr.
type errQuiet struct{ error }

func writeDoctor(w io.Writer, rep doctorReport) {
	for _, c := range rep.Checks {
		switch {
		case c.Skipped:
			fmt.Fprintf(w, "skip  %-18s left out (--skip)\n", c.Check)
		case c.Error != "":
			fmt.Fprintf(w, "FAIL  %-18s could not check: %s\n", c.Check, safe(c.Error))
		case c.OK:
			fmt.Fprintf(w, "ok    %-18s %s\n", c.Check, c.Summary)
		}
		for _, p := range c.Problems {
			fmt.Fprintf(w, "FAIL  %-18s %s\n", c.Check, safe(p.Message))
		}
		for _, n := range c.Notes {
			fmt.Fprintf(w, "note  %-18s %s\n", c.Check, safe(n))
		}
	}
}

// doctor runs the checks on one database.
type doctor struct {
	pool *pgxpool.Pool
	q    *db.Queries
	o    doctorOptions
	ov   *stats.Overview // read once, by the checks that need it
}

func runDoctor(ctx context.Context, pool *pgxpool.Pool, o doctorOptions) doctorReport {
	d := &doctor{pool: pool, q: db.New(pool), o: o}
	run := map[string]func(context.Context, *checkResult) error{
		"long-transactions": d.longTransactions,
		"dead-tuples":       d.deadTuples,
		"bloat":             d.bloat,
		"relay":             d.relay,
		"consumers":         d.consumers,
		"blocked-keys":      d.blockedKeys,
		"no-route":          d.noRoute,
		"quarantine":        d.quarantine,
		"dropped-topics":    d.droppedTopics,
		"replication-slots": d.replicationSlots,
		"timeouts":          d.timeouts,
		"autovacuum":        d.autovacuum,
	}
	rep := doctorReport{OK: true}
	for _, name := range doctorChecks {
		res := checkResult{Check: name}
		if o.skip[name] {
			res.OK, res.Skipped = true, true
			rep.Checks = append(rep.Checks, res)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := run[name](cctx, &res)
		cancel()
		if err != nil {
			res.Error = err.Error()
		}
		res.OK = err == nil && len(res.Problems) == 0
		if !res.OK {
			res.Summary = ""
			rep.OK = false
		}
		rep.Checks = append(rep.Checks, res)
	}
	return rep
}

func (r *checkResult) problem(detail map[string]any, format string, args ...any) {
	r.Problems = append(r.Problems, finding{Message: fmt.Sprintf(format, args...), Detail: detail})
}

// roundAge formats an age for a line.
func roundAge(seconds float64) string { return age(seconds) }

func (d *doctor) overview(ctx context.Context) (*stats.Overview, error) {
	if d.ov == nil {
		ov, err := stats.Read(ctx, d.pool)
		if err != nil {
			return nil, err
		}
		d.ov = &ov
	}
	return d.ov, nil
}

func (d *doctor) longTransactions(ctx context.Context, r *checkResult) error {
	rows, err := d.q.DoctorLongTransactions(ctx, d.o.xactAge.Seconds())
	if err != nil {
		return err
	}
	for _, t := range rows {
		scope := "holding back vacuum in this database"
		if t.HasXid {
			scope = "with a transaction ID, holding back vacuum on the whole cluster"
		}
		r.problem(map[string]any{"pid": t.Pid, "application_name": t.ApplicationName, "user": t.UserName,
			"database": t.Database, "state": t.State, "age_seconds": t.AgeSeconds, "query": t.Query},
			"pid %d (application %q, user %s, database %s, %s) has had a transaction open for %s, %s: %s",
			t.Pid, t.ApplicationName, t.UserName, t.Database, t.State, roundAge(t.AgeSeconds), scope,
			oneLine(t.Query, 120))
	}
	prepared, err := d.q.DoctorPreparedTransactions(ctx, d.o.xactAge.Seconds())
	if err != nil {
		return err
	}
	for _, p := range prepared {
		r.problem(map[string]any{"gid": p.Gid, "owner": p.Owner, "database": p.Database, "age_seconds": p.AgeSeconds},
			"prepared transaction %q (owner %s, database %s) has waited %s for COMMIT PREPARED or ROLLBACK PREPARED, holding back vacuum",
			p.Gid, p.Owner, p.Database, roundAge(p.AgeSeconds))
	}
	if can, err := d.q.DoctorCanReadAllStats(ctx); err == nil && !can {
		r.Notes = append(r.Notes, "this role sees only its own sessions: run as a member of pg_monitor to check everyone's")
	}
	r.Summary = fmt.Sprintf("no transaction older than %s holds the xmin horizon", duration(d.o.xactAge))
	return nil
}

// oneLine squeezes a query onto one line of at most n runes.
func oneLine(s string, n int) string { return cell(s, n) }

func (d *doctor) deadTuples(ctx context.Context, r *checkResult) error {
	tables, err := d.q.DoctorTables(ctx)
	if err != nil {
		return err
	}
	for _, t := range tables {
		if t.Dead < d.o.deadTuples || float64(t.Dead) <= d.o.deadRatio*float64(t.Live+t.Dead) {
			continue
		}
		r.problem(map[string]any{"table": t.TableName, "dead": t.Dead, "live": t.Live, "vacuum_age_seconds": t.VacuumAgeSeconds},
			"postbox.%s holds %d dead rows beside %d live ones (%.0f%%); %s",
			t.TableName, t.Dead, t.Live, 100*float64(t.Dead)/float64(t.Live+t.Dead), lastVacuum(t))
	}
	r.Summary = fmt.Sprintf("no postbox table holds more than %d dead rows and %.0f%% dead", d.o.deadTuples, 100*d.o.deadRatio)
	return nil
}

func lastVacuum(t db.DoctorTablesRow) string {
	if t.VacuumAgeSeconds < 0 {
		return "never vacuumed"
	}
	how := "vacuumed"
	if t.LastWasAuto {
		how = "autovacuumed"
	}
	return fmt.Sprintf("last %s %s ago", how, roundAge(t.VacuumAgeSeconds))
}

func (d *doctor) bloat(ctx context.Context, r *checkResult) error {
	tables, err := d.q.DoctorTables(ctx)
	if err != nil {
		return err
	}
	for _, t := range tables {
		if t.Bytes == 0 || t.Bytes < int64(d.o.bloatMinSize) || t.LiveBytes <= 0 {
			continue // too small to matter, or never analyzed
		}
		if fill := t.LiveBytes / float64(t.Bytes); fill < d.o.bloatFill {
			r.problem(map[string]any{"table": t.TableName, "bytes": t.Bytes, "live_bytes": t.LiveBytes},
				"postbox.%s takes %s but its %d live rows fill about %.0f%% of it (vacuum frees the rest for reuse, not for the disk); %s",
				t.TableName, byteSize(t.Bytes), t.Live, 100*fill, lastVacuum(t))
		}
	}
	r.Summary = fmt.Sprintf("no postbox table over %s is less than %.0f%% live", d.o.bloatMinSize, 100*d.o.bloatFill)
	return nil
}

func (d *doctor) relay(ctx context.Context, r *checkResult) error {
	ov, err := d.overview(ctx)
	if err != nil {
		return err
	}
	b := ov.Outbox
	if b.Due.N > 0 && b.DueAge > d.o.relayLag {
		n, _ := d.q.DoctorRelaySessions(ctx)
		r.problem(map[string]any{"due": b.Due.N, "due_age_seconds": b.DueAge.Seconds(), "relay_sessions": n},
			"%s due outbox messages wait, the oldest for %s: no relay is moving them (%d sessions named postbox-relay are connected)",
			b.Due, roundAge(b.DueAge.Seconds()), n)
	}
	r.Summary = fmt.Sprintf("no due outbox message has waited more than %s (%s pending)", duration(d.o.relayLag), b.Pending)
	return nil
}

func (d *doctor) consumers(ctx context.Context, r *checkResult) error {
	ov, err := d.overview(ctx)
	if err != nil {
		return err
	}
	for _, s := range ov.Subscribers {
		if s.Kind == stats.Undeclared || s.Ready.N == 0 || s.Lag <= d.o.lag || s.HandledPerMinute > 0 {
			continue
		}
		r.problem(map[string]any{"subscriber": s.Name, "ready": s.Ready.N, "lag_seconds": s.Lag.Seconds()},
			"subscriber %s has %s ready deliveries, the oldest pending for %s, and handled none in the last minute: is a consumer running?",
			s.Name, s.Ready, roundAge(s.Lag.Seconds()))
	}
	r.Summary = fmt.Sprintf("every subscriber with ready deliveries older than %s is being handled", duration(d.o.lag))
	return nil
}

func (d *doctor) blockedKeys(ctx context.Context, r *checkResult) error {
	ov, err := d.overview(ctx)
	if err != nil {
		return err
	}
	for _, s := range ov.Subscribers {
		if s.Blocked.N == 0 && s.InBackoff.N == 0 {
			continue
		}
		keys, err := stats.BlockedKeys(ctx, d.pool, s.Name, stats.MaxBlockedKeys)
		if err != nil {
			return err
		}
		var bad []stats.BlockedKey
		for _, k := range keys {
			if k.BehindDeadLetter || k.Attempts >= d.o.keyAttempts {
				bad = append(bad, k)
			}
		}
		if len(bad) == 0 {
			continue
		}
		k := bad[0]
		why := fmt.Sprintf("its head failed %d times", k.Attempts)
		if k.BehindDeadLetter {
			why = "it waits behind a dead letter"
		}
		r.problem(map[string]any{"subscriber": s.Name, "keys": len(bad), "key": k.Key, "message_id": k.MessageID.String(),
			"attempts": k.Attempts, "last_error": k.LastError},
			"subscriber %s has %d blocked keys; key %q holds back %s deliveries: %s: %s",
			s.Name, len(bad), k.Key, k.Parked, why, oneLine(k.LastError, 200))
	}
	r.Summary = fmt.Sprintf("no key's head has failed %d times or waits behind a dead letter", d.o.keyAttempts)
	return nil
}

func (d *doctor) noRoute(ctx context.Context, r *checkResult) error {
	ov, err := d.overview(ctx)
	if err != nil {
		return err
	}
	for _, s := range ov.Subscribers {
		if s.Kind != stats.Undeclared || s.Name == dlq.Relay || s.Dead.N == 0 {
			continue
		}
		n, err := dlq.CountPurge(ctx, d.pool, dlq.Filter{Subscriber: s.Name, ErrorContains: "no-route", Limit: dlq.MaxLimit})
		if err != nil {
			return err
		}
		if n == 0 {
			continue
		}
		more := ""
		if n >= dlq.MaxLimit {
			more = " or more"
		}
		r.problem(map[string]any{"queue": s.Name, "letters": n},
			"%d%s messages sent to %q are no-route dead letters: no such queue (or no route matched); declare it (postbox queue declare %s) and replay them (postbox dlq replay --subscriber %s)",
			n, more, s.Name, s.Name, s.Name)
	}
	r.Summary = "no message was sent to a queue that is not declared"
	return nil
}

func (d *doctor) quarantine(ctx context.Context, r *checkResult) error {
	ov, err := d.overview(ctx)
	if err != nil {
		return err
	}
	for _, s := range ov.Subscribers {
		if s.Name == dlq.Relay && s.Dead.N > 0 {
			r.problem(map[string]any{"letters": s.Dead.N},
				"the relay quarantined %s outbox rows it could not move: postbox dlq list --subscriber %s shows why",
				s.Dead, dlq.Relay)
		}
	}
	r.Summary = "the relay quarantined no outbox row"
	return nil
}

func (d *doctor) droppedTopics(ctx context.Context, r *checkResult) error {
	rows, err := d.q.DoctorDroppedTopics(ctx)
	if err != nil {
		return err
	}
	for _, t := range rows {
		r.problem(map[string]any{"topic": t.Topic, "messages": t.Messages},
			"topic %q has %d messages in the outbox and no subscription: the relay will drop them (postbox subscribe --subscriber NAME --topic %s)",
			t.Topic, t.Messages, t.Topic)
	}
	r.Summary = "every topic in the outbox has a subscription"
	return nil
}

func (d *doctor) replicationSlots(ctx context.Context, r *checkResult) error {
	rows, err := d.q.DoctorReplicationSlots(ctx, int64(d.o.slotWAL))
	if err != nil {
		return err
	}
	for _, s := range rows {
		state := "inactive"
		if s.Active {
			state = "active"
		}
		msg := fmt.Sprintf("replication slot %q (%s, %s) keeps %s of WAL", s.SlotName, s.SlotType, state, byteSize(s.RetainedBytes))
		if s.HoldsXmin && !s.Active {
			msg += " and holds the xmin horizon back"
		}
		r.problem(map[string]any{"slot": s.SlotName, "type": s.SlotType, "active": s.Active, "retained_bytes": s.RetainedBytes},
			"%s: drop it if nothing consumes it (SELECT pg_drop_replication_slot('%s'))", msg, s.SlotName)
	}
	r.Summary = fmt.Sprintf("no replication slot keeps more than %s of WAL", d.o.slotWAL)
	return nil
}

func (d *doctor) timeouts(ctx context.Context, r *checkResult) error {
	settings, err := d.q.DoctorSettings(ctx)
	if err != nil {
		return err
	}
	budget := d.o.batchBudget
	for _, s := range settings {
		if s.Name != "idle_in_transaction_session_timeout" && s.Name != "transaction_timeout" {
			continue
		}
		if t, ok := pgDuration(s.Setting + s.Unit); ok && t > 0 && t < budget {
			r.problem(map[string]any{"setting": s.Name, "value": s.Setting + s.Unit, "where": "session"},
				"%s is %s here, below the consumers' batch budget of %s: batches will be cut off mid-way (raise it, or lower inbox.Config.BatchBudget and pass --batch-budget)",
				s.Name, t, budget)
		}
	}
	roles, err := d.q.DoctorRoleSettings(ctx)
	if err != nil {
		return err
	}
	for _, s := range roles {
		t, ok := pgDuration(s.Value)
		if !ok || t <= 0 || t >= budget {
			continue
		}
		where := "for every role"
		switch {
		case s.RoleName != "" && s.InDatabase:
			where = fmt.Sprintf("for role %s in this database", s.RoleName)
		case s.RoleName != "":
			where = "for role " + s.RoleName
		case s.InDatabase:
			where = "for this database"
		}
		r.problem(map[string]any{"setting": s.Name, "value": s.Value, "role": s.RoleName, "database": s.InDatabase},
			"%s is set to %s %s, below the consumers' batch budget of %s: batches will be cut off mid-way", s.Name, t, where, budget)
	}
	r.Summary = fmt.Sprintf("no transaction timeout below the batch budget of %s", budget)
	return nil
}

func (d *doctor) autovacuum(ctx context.Context, r *checkResult) error {
	settings, err := d.q.DoctorSettings(ctx)
	if err != nil {
		return err
	}
	for _, s := range settings {
		if (s.Name == "autovacuum" || s.Name == "track_counts") && s.Setting != "on" {
			r.problem(map[string]any{"setting": s.Name, "value": s.Setting},
				"%s is off on this server: nothing vacuums the postbox tables, whose deleted rows then pile up", s.Name)
		}
	}
	tables, err := d.q.DoctorAutovacuumOff(ctx)
	if err != nil {
		return err
	}
	for _, t := range tables {
		r.problem(map[string]any{"table": t}, "autovacuum is off for postbox.%s (ALTER TABLE postbox.%s RESET (autovacuum_enabled))", t, t)
	}
	r.Summary = "autovacuum runs on every postbox table"
	return nil
}

// pgDuration reads a PostgreSQL time setting: a number with a unit (us, ms,
// s, min, h, d), milliseconds without one.
func pgDuration(v string) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	i := strings.IndexFunc(v, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := v, "ms"
	if i >= 0 {
		num, unit = v[:i], strings.TrimSpace(v[i:])
	}
	n, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, false
	}
	units := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second,
		"min": time.Minute, "h": time.Hour, "d": 24 * time.Hour}
	u, ok := units[unit]
	if !ok {
		return 0, false
	}
	return time.Duration(n * float64(u)), true
}

// byteSize is a flag and a printed size: bytes, or a number with kB, MB,
// GB or TB (powers of 1024, as PostgreSQL counts).
type byteSize int64

func (b byteSize) String() string {
	for _, u := range []struct {
		name string
		size int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}} {
		if int64(b) >= u.size && int64(b)%u.size == 0 {
			return fmt.Sprintf("%d%s", int64(b)/u.size, u.name)
		}
		if int64(b) >= u.size*10 {
			return fmt.Sprintf("%.1f%s", float64(b)/float64(u.size), u.name)
		}
	}
	return fmt.Sprintf("%d bytes", int64(b))
}

func (b *byteSize) Set(v string) error {
	v = strings.TrimSpace(v)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}, {"KB", 1 << 10}, {"B", 1}} {
		if s, ok := strings.CutSuffix(v, u.suffix); ok {
			v, mult = strings.TrimSpace(s), u.size
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("want a size such as 1024, 64MB or 1GB")
	}
	*b = byteSize(n * mult)
	return nil
}
