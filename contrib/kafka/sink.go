package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/postbox-dev/postbox/dispatcher"
)

// SinkConfig configures a Sink. Zero values mean the defaults.
type SinkConfig struct {
	// Topic maps a message to the Kafka topic it is produced to. Default
	// DefaultTopic. The topic must exist: the Sink does not create topics.
	Topic func(e *dispatcher.Envelope) string
	// Timeout bounds one Deliver whose context has no deadline, and is
	// the producer's record delivery timeout unless opts set
	// kgo.RecordDeliveryTimeout. Default 30s.
	Timeout time.Duration
	// PartitionsMaxAge is how long a topic's partition count, read from
	// the cluster's metadata, is used before it is read again. Default 10s.
	PartitionsMaxAge time.Duration
	// Logger receives failed batches. Default: silent.
	Logger *slog.Logger
}

// Default settings.
const (
	DefaultTimeout          = 30 * time.Second
	DefaultPartitionsMaxAge = 10 * time.Second
)

func (c SinkConfig) withDefaults() (SinkConfig, error) {
	if c.Topic == nil {
		c.Topic = DefaultTopic
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.PartitionsMaxAge == 0 {
		c.PartitionsMaxAge = DefaultPartitionsMaxAge
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Timeout < 0:
		return c, fmt.Errorf("kafka: SinkConfig.Timeout %s: negative", c.Timeout)
	case c.PartitionsMaxAge < 0:
		return c, fmt.Errorf("kafka: SinkConfig.PartitionsMaxAge %s: negative", c.PartitionsMaxAge)
	}
	return c, nil
}

// SinkStats are a Sink's counters since it was created.
type SinkStats struct {
	Batches int64 // Deliver calls that returned nil
	Records int64 // records the cluster acknowledged
	Failed  int64 // Deliver calls that returned an error
}

// Sink produces the relay's messages to Kafka with franz-go's idempotent
// producer. Set it as relay.Config.Sink. It is safe for concurrent use.
type Sink struct {
	cl  *kgo.Client
	cfg SinkConfig

	batches, records, failed atomic.Int64
}

// NewSink returns a Sink producing through a client made with opts
// (kgo.SeedBrokers, TLS, SASL, ...). The Sink sets the partitioner itself
// (kgo.ManualPartitioner: the record's partition is the message's
// KeyHash modulo the topic's partition count, which is what Kafka's
// default partitioner picks for the same key) and needs the idempotent
// producer, franz-go's default: opts must not disable it.
func NewSink(cfg SinkConfig, opts ...kgo.Opt) (*Sink, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	all := make([]kgo.Opt, 0, len(opts)+2)
	all = append(all, kgo.RecordDeliveryTimeout(cfg.Timeout))
	all = append(all, opts...)
	all = append(all, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	cl, err := kgo.NewClient(all...)
	if err != nil {
		return nil, fmt.Errorf("kafka: new client: %w", err)
	}
	if disabled, _ := cl.OptValue(kgo.DisableIdempotentWrite).(bool); disabled {
		cl.Close()
		return nil, errors.New("kafka: the Sink needs the idempotent producer; remove kgo.DisableIdempotentWrite")
	}
	return &Sink{cl: cl, cfg: cfg}, nil
}

// Close flushes nothing (Deliver waits for its records) and closes the
// client.
func (s *Sink) Close() { s.cl.Close() }

// Stats returns the sink's counters.
func (s *Sink) Stats() SinkStats {
	return SinkStats{Batches: s.batches.Load(), Records: s.records.Load(), Failed: s.failed.Load()}
}

// Deliver produces batch and returns nil once every record is
// acknowledged by all in-sync replicas.
//
// Records of one partition are produced in batch order, and the
// idempotent producer keeps them so through its retries: a record that
// fails fails every later record buffered for its partition, so no later
// message of a key is stored after a failed one. The relay then re-sends
// the batch; what had been stored is stored again (Kafka's idempotence
// covers one producer's retries, not a re-sent batch), in order, and
// consumers drop the copies by message ID (see Consumer).
func (s *Sink) Deliver(ctx context.Context, batch []dispatcher.Envelope) error {
	if len(batch) == 0 {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok && s.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.Timeout)
		defer cancel()
	}
	acked, err := s.produce(ctx, batch)
	s.records.Add(acked)
	if err != nil {
		s.failed.Add(1)
		err = fmt.Errorf("kafka: deliver %d messages (%d acknowledged): %w", len(batch), acked, err)
		s.cfg.Logger.Error("kafka sink: batch failed", "err", err)
		return err
	}
	s.batches.Add(1)
	return nil
}

func (s *Sink) produce(ctx context.Context, batch []dispatcher.Envelope) (int64, error) {
	topics := make([]string, len(batch))
	for i := range batch {
		topics[i] = s.cfg.Topic(&batch[i])
	}
	partitions, err := s.partitions(ctx, topics)
	if err != nil {
		return 0, err
	}
	var (
		mu    sync.Mutex
		first error
		acked atomic.Int64
		left  atomic.Int64
		done  = make(chan struct{})
	)
	left.Store(int64(len(batch)))
	promise := func(r *kgo.Record, err error) {
		if err != nil {
			mu.Lock()
			if first == nil {
				first = fmt.Errorf("record for %s partition %d: %w", r.Topic, r.Partition, err)
			}
			mu.Unlock()
		} else {
			acked.Add(1)
		}
		if left.Add(-1) == 0 {
			close(done)
		}
	}
	for i := range batch {
		e := &batch[i]
		p := e.KeyHash % partitions[topics[i]]
		s.cl.Produce(ctx, record(topics[i], p, e), promise)
	}
	select {
	case <-done:
	case <-ctx.Done():
		// Records already sent may yet be stored; the relay's retry
		// stores them again and consumers drop the copies.
		return acked.Load(), fmt.Errorf("waiting for %d acknowledgements: %w", left.Load(), ctx.Err())
	}
	mu.Lock()
	defer mu.Unlock()
	return acked.Load(), first
}

// partitions returns the partition count of each topic, from metadata at
// most PartitionsMaxAge old.
func (s *Sink) partitions(ctx context.Context, topics []string) (map[string]int32, error) {
	out := make(map[string]int32)
	req := kmsg.NewPtrMetadataRequest()
	for _, t := range topics {
		if _, ok := out[t]; !ok {
			out[t] = 0
			rt := kmsg.NewMetadataRequestTopic()
			rt.Topic = kmsg.StringPtr(t)
			req.Topics = append(req.Topics, rt)
		}
	}
	resp, err := s.cl.RequestCachedMetadata(ctx, req, s.cfg.PartitionsMaxAge)
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	for _, t := range resp.Topics {
		if t.Topic == nil {
			continue
		}
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			return nil, fmt.Errorf("topic %q: %w", *t.Topic, err)
		}
		out[*t.Topic] = int32(len(t.Partitions))
	}
	for t, n := range out {
		if n == 0 {
			return nil, fmt.Errorf("topic %q: no partitions in the cluster's metadata", t)
		}
	}
	return out, nil
}
