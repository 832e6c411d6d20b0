// Command bench-sink measures the relay moving a backlog to Kafka through
// the Sink: it preloads N messages into the outbox of the database named
// by DATABASE_URL, runs the relay until Kafka has acknowledged every one
// of them, and prints one line in the format of `postbox bench`:
//
//	RESULT workload=sink-kafka msgs=<n> seconds=<s> rate=<msgs/s> rss_mib=<max RSS>
//
// seconds runs from the relay's start to the last batch deleted from the
// outbox; rss_mib is the process's peak resident set (preloading
// included). Without -brokers the cluster is kfake, in this process and in
// memory, so its log counts in rss_mib too. Progress goes to stderr.
//
//	DATABASE_URL=postgres://postgres@127.0.0.1:5432/postbox_bench go run ./cmd/bench-sink -n 100000
//
// It drops and recreates the postbox schema, so it refuses a database
// whose name contains neither "bench" nor "test". With -brokers, the topic
// must exist.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/contrib/kafka"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
	"github.com/postbox-dev/postbox/schema"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bench-sink:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	var (
		n          = flag.Int("n", 100_000, "messages to preload and relay")
		keys       = flag.Int("keys", 1000, "distinct partition keys (0: no keys)")
		batch      = flag.Int("batch", relay.DefaultBatchSize, "relay batch size")
		brokers    = flag.String("brokers", "", "Kafka seed brokers, comma-separated (default: kfake in this process)")
		topic      = flag.String("topic", "postbox-bench", "Kafka topic")
		partitions = flag.Int("partitions", 16, "partitions of the topic kfake creates")
		dbURL      = flag.String("database-url", os.Getenv("DATABASE_URL"), "PostgreSQL (default $DATABASE_URL)")
	)
	flag.Parse()
	if *dbURL == "" {
		return errors.New("no database: set DATABASE_URL or -database-url (a dedicated database such as postbox_bench)")
	}
	pool, err := pgxpool.New(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	var name string
	if err := pool.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	if !strings.Contains(name, "bench") && !strings.Contains(name, "test") {
		return fmt.Errorf("database %q: bench-sink drops the postbox schema, so it runs only on a database whose name contains \"bench\" or \"test\"", name)
	}
	if err := schema.Reset(ctx, pool); err != nil {
		return fmt.Errorf("drop postbox schema: %w", err)
	}
	if err := schema.Migrate(ctx, pool); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}

	seeds := strings.Split(*brokers, ",")
	if *brokers == "" {
		cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(int32(*partitions), *topic))
		if err != nil {
			return fmt.Errorf("kfake: %w", err)
		}
		defer cluster.Close()
		seeds = cluster.ListenAddrs()
	}

	start := time.Now()
	if err := preload(ctx, pool, *n, *keys); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "preloaded %d messages in %s\n", *n, time.Since(start).Round(time.Millisecond))

	sink, err := kafka.NewSink(kafka.SinkConfig{Topic: func(*dispatcher.Envelope) string { return *topic }},
		kgo.SeedBrokers(seeds...))
	if err != nil {
		return err
	}
	defer sink.Close()
	// Time spent in Deliver, to tell the broker's share from the relay's.
	var delivering time.Duration
	timed := dispatcher.SinkFunc(func(ctx context.Context, b []dispatcher.Envelope) error {
		t := time.Now()
		err := sink.Deliver(ctx, b)
		delivering += time.Since(t)
		return err
	})
	r, err := relay.New(pool, relay.Config{Sink: timed, BatchSize: *batch})
	if err != nil {
		return err
	}
	start = time.Now()
	if _, err := r.Drain(ctx); err != nil {
		return err
	}
	seconds := time.Since(start).Seconds()
	s := sink.Stats()
	fmt.Fprintf(os.Stderr, "sink %+v; relay %+v; %.3fs of %.3fs in Deliver\n", s, r.Stats(), delivering.Seconds(), seconds)
	if s.Records != int64(*n) {
		return fmt.Errorf("the sink counted %d records acknowledged, want %d", s.Records, *n)
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return err
	}
	fmt.Printf("RESULT workload=sink-kafka msgs=%d seconds=%.3f rate=%.1f rss_mib=%.1f\n",
		*n, seconds, float64(*n)/seconds, float64(ru.Maxrss)/1024) // Maxrss is in KiB on Linux
	return nil
}

// preload writes n order messages of about 90 bytes of JSON to the
// outbox, as postbox bench does, in transactions of 5,000.
func preload(ctx context.Context, pool *pgxpool.Pool, n, keys int) error {
	headers := map[string]string{postbox.HeaderContentType: "application/json"}
	chunk := make([]*postbox.Message, 0, 5000)
	for i := range n {
		m := &postbox.Message{Topic: "order.created", Type: "order.created", Headers: headers,
			Payload: fmt.Appendf(nil, `{"seq":%d,"customer":"c-%d","amount_cents":%d,"currency":"EUR"}`, i, i%1000, 1000+i%9000)}
		if keys > 0 {
			m.Key = "customer-" + strconv.Itoa(i%keys)
		}
		chunk = append(chunk, m)
		if len(chunk) == cap(chunk) || i == n-1 {
			if err := outbox.PublishBatch(ctx, pool, chunk); err != nil {
				return fmt.Errorf("preload: %w", err)
			}
			chunk = chunk[:0]
		}
	}
	return nil
}
