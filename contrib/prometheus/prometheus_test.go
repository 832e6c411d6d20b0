package postboxprom_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/postbox-dev/postbox"
	postboxprom "github.com/postbox-dev/postbox/contrib/prometheus"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// A relay and two consumers of one queue, instrumented, move and handle
// ten messages, of which one is invalid: the counters are theirs, the
// durations cover every committed batch, and the database collector sees
// the dead letter.
func TestMetricsOfConsumersAndRelays(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 8)
	if err := dispatcher.DeclareQueue(ctx, pool, "billing", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		payload := fmt.Appendf(nil, `{"n":%d}`, i)
		if i == 3 {
			payload = []byte(`{"invalid":true}`)
		}
		if err := outbox.Send(ctx, pool, &postbox.Message{Topic: "billing", Key: fmt.Sprint(i), Payload: payload}); err != nil {
			t.Fatal(err)
		}
	}

	m := postboxprom.New(postboxprom.Config{ConstLabels: prometheus.Labels{"service": "test"}})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m, postboxprom.NewDatabase(pool, postboxprom.DatabaseConfig{ConstLabels: prometheus.Labels{"service": "test"}}))

	r, err := relay.New(pool, relay.Config{OnBatch: m.OnRelayBatch})
	if err != nil {
		t.Fatal(err)
	}
	m.AddRelay(r)
	if _, err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if strings.Contains(string(d.Payload), "invalid") {
			return postbox.Permanent(errors.New("invalid order"))
		}
		return nil
	})
	var consumers []*inbox.Consumer
	for range 2 {
		c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "billing", Handler: h, BatchSize: 3, NoListen: true,
			OnBatch: m.OnConsumerBatch})
		if err != nil {
			t.Fatal(err)
		}
		m.AddConsumer("billing", c)
		consumers = append(consumers, c)
	}
	pgtest.WaitFor(t, ctx, 20*time.Second, "all handled or dead", func() bool {
		for _, c := range consumers {
			if _, err := c.RunOnce(ctx); err != nil {
				t.Fatal(err)
			}
		}
		return pgtest.Depths(t, ctx, pool, "billing").Pending() == 0
	})

	var batches int64
	for _, c := range consumers {
		batches += c.Stats().Batches
	}
	for series, want := range map[string]float64{
		`postbox_consumer_handled_total{service="test",subscriber="billing"}`:                9,
		`postbox_consumer_dead_total{service="test",subscriber="billing"}`:                   1,
		`postbox_consumer_failed_total{service="test",subscriber="billing"}`:                 0,
		`postbox_consumer_batches_total{service="test",subscriber="billing"}`:                float64(batches),
		`postbox_consumer_claim_duration_seconds_count{service="test",subscriber="billing"}`: float64(batches),
		`postbox_consumer_batch_duration_seconds_count{service="test",subscriber="billing"}`: float64(batches),
		`postbox_relay_messages_total{service="test"}`:                                       10,
		`postbox_relay_deliveries_total{service="test"}`:                                     10,
		`postbox_relay_batch_duration_seconds_count{service="test"}`:                         float64(r.Stats().Batches),
		`postbox_database_up{service="test"}`:                                                1,
		`postbox_dead_letters{service="test",subscriber="billing"}`:                          1,
		`postbox_inbox_depth{service="test",state="ready",subscriber="billing"}`:             0,
		`postbox_inbox_depth_exact{service="test",subscriber="billing"}`:                     1,
		`postbox_outbox_pending{service="test"}`:                                             0,
	} {
		if got := sample(t, reg, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if got := sample(t, reg, `postbox_relay_last_success_timestamp_seconds{service="test"}`); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last success %v, want about now", got)
	}
	var claimTime time.Duration
	for _, c := range consumers {
		claimTime += c.Stats().ClaimTime
	}
	if got := sample(t, reg, `postbox_consumer_claim_seconds_total{service="test",subscriber="billing"}`); got <= 0 || math.Abs(got-claimTime.Seconds()) > 1e-6 {
		t.Errorf("claim seconds %v, want the consumers' ClaimTime %v", got, claimTime.Seconds())
	}
	if got := sample(t, reg, `postbox_inbox_handled_per_minute{service="test",subscriber="billing"}`); got != 9 {
		t.Errorf("handled per minute %v, want 9", got)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
}

// Without consumers or relays, only the durations' descriptions remain,
// and a database that does not answer is down, not an error.
func TestMetricsWhenThereIsNothing(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t, 2)
	db := postboxprom.NewDatabase(pool, postboxprom.DatabaseConfig{})
	pool.Close()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(postboxprom.New(postboxprom.Config{}), db)
	if got := sample(t, reg, "postbox_database_up"); got != 0 {
		t.Errorf("postbox_database_up = %v with the pool closed, want 0", got)
	}
	if got := sample(t, reg, "postbox_relay_messages_total"); got != -1 {
		t.Errorf("relay counters without a relay: %v", got)
	}
}

// sample is the value of one series (name and labels as exposed), -1 if
// there is none.
func sample(t *testing.T, reg *prometheus.Registry, series string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, suffix := range []string{"", "_count"} {
				labels := make([]string, 0, len(m.GetLabel()))
				for _, l := range m.GetLabel() {
					labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				name := f.GetName() + suffix
				if len(labels) > 0 {
					name += "{" + strings.Join(labels, ",") + "}"
				}
				if name != series {
					continue
				}
				switch {
				case suffix == "_count" && m.GetHistogram() != nil:
					return float64(m.GetHistogram().GetSampleCount())
				case suffix == "" && m.GetCounter() != nil:
					return m.GetCounter().GetValue()
				case suffix == "" && m.GetGauge() != nil:
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}
