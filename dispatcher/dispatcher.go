package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/invalid"
	"github.com/postbox-dev/postbox/internal/murmur2"
)

// Kinds of subscriber.
const (
	KindQueue = "queue"
	KindTopic = "topic"
)

// ErrKindConflict is returned when a name would mean two things: a queue
// and a topic subscriber, or a subscriber and a router.
var ErrKindConflict = errors.New("dispatcher: name conflict")

// ErrNotFound is returned for a subscriber or subscription that does not exist.
var ErrNotFound = errors.New("dispatcher: not found")

// Options are a subscriber's settings. Zero fields take the defaults.
type Options struct {
	// Partitions: how many partitions deliveries are spread over by key
	// (murmur2, as Kafka). Default 16, at most 4096.
	Partitions int
	// MaxAttempts before a delivery becomes a dead letter. Default 10.
	MaxAttempts int
	// Backoff between attempts: exponential with jitter.
	Backoff Backoff
	// DedupWindow is how long a handled message ID is remembered, so a
	// copy of it arriving within the window is dropped. Default 7 days.
	DedupWindow time.Duration
	// KeyOnDead is what later messages of a key do while one of its
	// messages is a dead letter: KeyProceeds (the default: they are
	// handled) or KeyParks (they wait, parked, until the letter is
	// replayed or purged, so the key's messages are handled strictly in
	// order even across a failure).
	KeyOnDead string
}

// Values of Options.KeyOnDead.
const (
	KeyProceeds = "proceed"
	KeyParks    = "park"
)

// Backoff is an exponential backoff schedule; zero fields take defaults.
type Backoff struct {
	Initial    time.Duration // default 1s
	Max        time.Duration // default 5m
	Multiplier float64       // default 2
}

// Defaults.
const (
	DefaultPartitions  = 16
	DefaultMaxAttempts = 10
	DefaultDedupWindow = 7 * 24 * time.Hour
)

// DefaultBackoff is the schedule used when Options.Backoff is zero.
var DefaultBackoff = Backoff{Initial: time.Second, Max: 5 * time.Minute, Multiplier: 2}

func (o Options) withDefaults() (Options, error) {
	if o.Partitions == 0 {
		o.Partitions = DefaultPartitions
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.DedupWindow == 0 {
		o.DedupWindow = DefaultDedupWindow
	}
	if o.Backoff.Initial == 0 {
		o.Backoff.Initial = DefaultBackoff.Initial
	}
	if o.Backoff.Max == 0 {
		o.Backoff.Max = DefaultBackoff.Max
	}
	if o.Backoff.Multiplier == 0 {
		o.Backoff.Multiplier = DefaultBackoff.Multiplier
	}
	if o.KeyOnDead == "" {
		o.KeyOnDead = KeyProceeds
	}
	switch {
	case o.Partitions < 1 || o.Partitions > 4096:
		return o, invalid.Errorf("Options.Partitions", "%d, want 1 to 4096", o.Partitions)
	case o.MaxAttempts < 1:
		return o, invalid.Errorf("Options.MaxAttempts", "%d, want at least 1", o.MaxAttempts)
	case o.DedupWindow < 0:
		return o, invalid.Errorf("Options.DedupWindow", "%s is negative", o.DedupWindow)
	case o.Backoff.Initial < 0 || o.Backoff.Max < o.Backoff.Initial:
		return o, invalid.Errorf("Options.Backoff", "Initial %s, Max %s: want 0 <= Initial <= Max", o.Backoff.Initial, o.Backoff.Max)
	case o.KeyOnDead != KeyProceeds && o.KeyOnDead != KeyParks:
		return o, invalid.Errorf("Options.KeyOnDead", "%q, want %q or %q", o.KeyOnDead, KeyProceeds, KeyParks)
	case o.Backoff.Multiplier < 1:
		return o, invalid.Errorf("Options.Backoff.Multiplier", "%g is less than 1", o.Backoff.Multiplier)
	}
	return o, nil
}

// Subscriber is a declared subscriber with its settings.
type Subscriber struct {
	Name      string
	Kind      string
	Options   Options
	CreatedAt time.Time
}

// Subscription routes messages whose topic matches Topic to Subscriber.
type Subscription struct {
	Subscriber string
	// Topic is a topic name, or a pattern whose dot-separated segments may
	// be '*' (exactly one segment) or '#' (zero or more segments):
	// "order.*" matches "order.created"; "order.#" matches "order",
	// "order.created" and "order.created.eu".
	Topic string
	// Filter, if set, is a SQL/JSON path over the JSON payload. A path that
	// yields a boolean decides by it ("$.totalAmount >= 10000"); any other
	// path matches when it yields an item ("$.totalAmount ? (@ >= 10000)").
	// Payloads that are not JSON match no filter.
	Filter    string
	CreatedAt time.Time
}

// DeclareQueue creates the queue name, or updates its settings. Messages
// sent to it with outbox.Send are handled by exactly one of its consumers.
func DeclareQueue(ctx context.Context, dbtx postbox.DBTX, name string, opts Options) error {
	return declare(ctx, dbtx, KindQueue, name, opts)
}

// DeclareSubscriber creates the topic subscriber name, or updates its
// settings. Subscribe declares a subscriber with default settings when it
// is missing, so this is needed only to change them.
func DeclareSubscriber(ctx context.Context, dbtx postbox.DBTX, name string, opts Options) error {
	return declare(ctx, dbtx, KindTopic, name, opts)
}

func declare(ctx context.Context, dbtx postbox.DBTX, kind, name string, opts Options) error {
	if err := postbox.ValidateName("name", name); err != nil {
		return err
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return err
	}
	q := db.New(dbtx)
	if err := notRouter(ctx, q, name); err != nil {
		return err
	}
	_, err = q.DeclareSubscriber(ctx, db.DeclareSubscriberParams{
		Name:              name,
		Kind:              kind,
		Partitions:        int32(opts.Partitions),
		MaxAttempts:       int32(opts.MaxAttempts),
		BackoffInitial:    opts.Backoff.Initial,
		BackoffMax:        opts.Backoff.Max,
		BackoffMultiplier: opts.Backoff.Multiplier,
		DedupWindow:       opts.DedupWindow,
		KeyOnDead:         opts.KeyOnDead,
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %q exists and is not a %s", ErrKindConflict, name, kind)
	}
	if err != nil {
		return fmt.Errorf("dispatcher: declare %s %q: %w", kind, name, err)
	}
	return nil
}

// notRouter refuses name when it has routing rules: the router's sends
// would reach a subscriber of that name as well as the rules' queues.
// (AddRoute refuses the other way round.)
func notRouter(ctx context.Context, q *db.Queries, name string) error {
	is, err := isRouter(ctx, q, name)
	if err != nil {
		return err
	}
	if is {
		return fmt.Errorf("%w: %q is a router", ErrKindConflict, name)
	}
	return nil
}

// Subscribe adds or replaces the subscription (s.Subscriber, s.Topic). The
// subscriber is declared with default settings if it does not exist. The
// name, the pattern and the filter are checked before anything is written.
func Subscribe(ctx context.Context, dbtx postbox.DBTX, s Subscription) error {
	if err := postbox.ValidateName("Subscription.Subscriber", s.Subscriber); err != nil {
		return err
	}
	re, err := patternRegexp("Subscription.Topic", s.Topic)
	if err != nil {
		return err
	}
	q := db.New(dbtx)
	var filter *string
	if s.Filter != "" {
		if err := checkFilter(ctx, dbtx, "Subscription.Filter", s.Filter); err != nil {
			return err
		}
		filter = &s.Filter
	}
	if err := notRouter(ctx, q, s.Subscriber); err != nil {
		return err
	}
	kind, err := q.EnsureTopicSubscriber(ctx, s.Subscriber)
	if err != nil {
		return fmt.Errorf("dispatcher: subscribe %q: %w", s.Subscriber, err)
	}
	if kind != KindTopic {
		return fmt.Errorf("%w: %q is a queue; send to it with outbox.Send", ErrKindConflict, s.Subscriber)
	}
	var regex *string
	if re != "" {
		regex = &re
	}
	err = q.UpsertSubscription(ctx, db.UpsertSubscriptionParams{
		Subscriber:   s.Subscriber,
		TopicPattern: s.Topic,
		TopicRegex:   regex,
		Filter:       filter,
	})
	if err != nil {
		return fmt.Errorf("dispatcher: subscribe %q to %q: %w", s.Subscriber, s.Topic, err)
	}
	return nil
}

// checkFilter parses the filter in the database, inside a savepoint when
// dbtx is a transaction, so a malformed filter is a validation error and the
// caller's transaction stays usable.
func checkFilter(ctx context.Context, dbtx postbox.DBTX, field, filter string) error {
	if len(filter) > 4096 {
		return invalid.Errorf(field, "%d bytes, more than 4096", len(filter))
	}
	if strings.IndexByte(filter, 0) >= 0 {
		return invalid.Errorf(field, "contains a NUL byte")
	}
	if v, ok := pathVariable(filter); ok {
		return invalid.Errorf(field, "%q names the path variable %s, which nothing binds", filter, v)
	}
	tx, ok := dbtx.(pgx.Tx)
	if !ok {
		return parseFilter(ctx, db.New(dbtx), field, filter)
	}
	// A failed statement aborts the whole transaction; a savepoint confines
	// the failure to the check.
	sp, err := tx.Begin(ctx)
	if err != nil {
		return fmt.Errorf("dispatcher: check filter: %w", err)
	}
	if err := parseFilter(ctx, db.New(sp), field, filter); err != nil {
		if rbErr := sp.Rollback(ctx); rbErr != nil {
			return fmt.Errorf("dispatcher: check filter: %w", errors.Join(err, rbErr))
		}
		return err
	}
	if err := sp.Commit(ctx); err != nil {
		return fmt.Errorf("dispatcher: check filter: %w", err)
	}
	return nil
}

// pathVariable finds the first SQL/JSON path variable ($name or $"name")
// in filter, outside string literals. Nothing binds one when the relay
// evaluates a filter, so a filter that names one could never match.
func pathVariable(filter string) (string, bool) {
	inString := false
	for i := 0; i < len(filter); i++ {
		switch c := filter[i]; {
		case inString && c == '\\':
			i++
		case c == '"':
			inString = !inString
		case !inString && c == '$' && i+1 < len(filter):
			n := filter[i+1]
			if n == '"' || n == '_' || n >= '0' && n <= '9' || n >= 'a' && n <= 'z' || n >= 'A' && n <= 'Z' || n >= 0x80 {
				end := i + 2
				for end < len(filter) && filter[end] != ' ' && filter[end] != ')' && filter[end] != '.' && filter[end] != '[' {
					end++
				}
				return filter[i:end], true
			}
		}
	}
	return "", false
}

// parseFilter casts filter to jsonpath and turns a syntax error into a
// validation error.
func parseFilter(ctx context.Context, q *db.Queries, field, filter string) error {
	err := q.CheckJSONPath(ctx, filter)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42601" || strings.HasPrefix(pgErr.Code, "22")) {
		return invalid.Errorf(field, "%q is not a SQL/JSON path: %s", filter, pgErr.Message)
	}
	if err != nil {
		return fmt.Errorf("dispatcher: check filter: %w", err)
	}
	return nil
}

// Unsubscribe removes the subscription (subscriber, topic). Deliveries
// already in the inbox stay.
func Unsubscribe(ctx context.Context, dbtx postbox.DBTX, subscriber, topic string) error {
	if err := postbox.ValidateName("subscriber", subscriber); err != nil {
		return err
	}
	if _, err := patternRegexp("topic", topic); err != nil {
		return err
	}
	n, err := db.New(dbtx).DeleteSubscription(ctx, db.DeleteSubscriptionParams{Subscriber: subscriber, TopicPattern: topic})
	if err != nil {
		return fmt.Errorf("dispatcher: unsubscribe %q from %q: %w", subscriber, topic, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: subscription %q to %q", ErrNotFound, subscriber, topic)
	}
	return nil
}

// DropSubscriber removes a subscriber or queue and its subscriptions.
// Deliveries already in the inbox stay until purged.
func DropSubscriber(ctx context.Context, dbtx postbox.DBTX, name string) error {
	if err := postbox.ValidateName("name", name); err != nil {
		return err
	}
	n, err := db.New(dbtx).DeleteSubscriber(ctx, name)
	if err != nil {
		return fmt.Errorf("dispatcher: drop %q: %w", name, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: subscriber %q", ErrNotFound, name)
	}
	return nil
}

// GetSubscriber returns one subscriber's settings.
func GetSubscriber(ctx context.Context, dbtx postbox.DBTX, name string) (Subscriber, error) {
	if err := postbox.ValidateName("name", name); err != nil {
		return Subscriber{}, err
	}
	row, err := db.New(dbtx).GetSubscriber(ctx, name)
	if errors.Is(err, pgx.ErrNoRows) {
		return Subscriber{}, fmt.Errorf("%w: subscriber %q", ErrNotFound, name)
	}
	if err != nil {
		return Subscriber{}, fmt.Errorf("dispatcher: get %q: %w", name, err)
	}
	return fromRow(row), nil
}

// Subscribers lists every subscriber and queue.
func Subscribers(ctx context.Context, dbtx postbox.DBTX) ([]Subscriber, error) {
	rows, err := db.New(dbtx).ListSubscribers(ctx)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: list subscribers: %w", err)
	}
	out := make([]Subscriber, len(rows))
	for i, r := range rows {
		out[i] = fromRow(r)
	}
	return out, nil
}

func fromRow(r db.PostboxSubscriber) Subscriber {
	return Subscriber{
		Name: r.Name,
		Kind: r.Kind,
		Options: Options{
			Partitions:  int(r.Partitions),
			MaxAttempts: int(r.MaxAttempts),
			Backoff:     Backoff{Initial: r.BackoffInitial, Max: r.BackoffMax, Multiplier: r.BackoffMultiplier},
			DedupWindow: r.DedupWindow,
			KeyOnDead:   r.KeyOnDead,
		},
		CreatedAt: r.CreatedAt,
	}
}

// Subscriptions lists every subscription.
func Subscriptions(ctx context.Context, dbtx postbox.DBTX) ([]Subscription, error) {
	rows, err := db.New(dbtx).ListSubscriptions(ctx)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: list subscriptions: %w", err)
	}
	out := make([]Subscription, len(rows))
	for i, r := range rows {
		out[i] = Subscription{Subscriber: r.Subscriber, Topic: r.TopicPattern, Filter: r.Filter, CreatedAt: r.CreatedAt}
	}
	return out, nil
}

// Partition is the partition of key among n partitions: Kafka's default
// partitioner (murmur2), so a Kafka sink agrees with postbox's inbox.
func Partition(key string, n int) int {
	return murmur2.Partition([]byte(key), n)
}

// KeyHash is the hash postbox stores with a message (Envelope.KeyHash, the
// outbox's key_hash): Kafka's murmur2 of the key with the sign bit
// cleared, or of the message ID's 16 bytes when there is no key. A message
// belongs to relay and order partition KeyHash % 16, and to Kafka
// partition KeyHash % partitions. The SQL function postbox.key_hash
// computes the same for hand-written outbox rows.
func KeyHash(key string, id uuid.UUID) int32 {
	if key != "" {
		return murmur2.Positive([]byte(key))
	}
	return murmur2.Positive(id[:])
}

var segmentRE = regexp.MustCompile(`^[a-z0-9_-]+$`)

// PatternRegexp validates a topic pattern and returns the anchored regular
// expression the relay matches topics with, or "" for a plain topic name
// (matched by equality). Segments are separated by '.'; '*' matches exactly
// one segment and '#' zero or more. The expression is matched against the
// topic with a leading dot ('.' || topic), which lets every segment carry its
// own dot and '#' match zero segments.
func PatternRegexp(pattern string) (string, error) {
	return patternRegexp("pattern", pattern)
}

// patternRegexp is PatternRegexp naming the pattern field in its errors.
func patternRegexp(field, pattern string) (string, error) {
	if len(pattern) == 0 || len(pattern) > 200 {
		return "", invalid.Errorf(field, "pattern %q must be 1 to 200 characters", pattern)
	}
	segs := strings.Split(pattern, ".")
	wild := false
	for _, s := range segs {
		switch {
		case s == "*" || s == "#":
			wild = true
		case !segmentRE.MatchString(s):
			return "", invalid.Errorf(field, "pattern %q: segment %q must be '*', '#' or match %s", pattern, s, segmentRE)
		}
	}
	if !wild {
		return "", postbox.ValidateName(field, pattern)
	}
	var b strings.Builder
	b.WriteString("^")
	for _, s := range segs {
		switch s {
		case "#":
			b.WriteString(`(\.[^.]+)*`)
		case "*":
			b.WriteString(`\.[^.]+`)
		default:
			b.WriteString(`\.` + regexp.QuoteMeta(s))
		}
	}
	b.WriteString("$")
	return b.String(), nil
}
