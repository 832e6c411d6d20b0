package bench

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/postbox-dev/postbox"
)

// result is what a workload reports: one RESULT line.
type result struct {
	workload string
	msgs     int
	seconds  float64
	// latency percentiles, when measured
	hasLatency bool
	p50, p99   time.Duration
	// baseline rate measured in the same run, when asked for
	baseline float64
	// extra are further key=value figures of the workload, in order
	extra []string
}

func (r result) rate() float64 {
	if r.seconds <= 0 {
		return 0
	}
	return float64(r.msgs) / r.seconds
}

// String formats the RESULT line.
func (r result) String() string {
	s := fmt.Sprintf("RESULT workload=%s msgs=%d seconds=%.3f rate=%.1f", r.workload, r.msgs, r.seconds, r.rate())
	if r.hasLatency {
		s += fmt.Sprintf(" p50_ms=%.2f p99_ms=%.2f", ms(r.p50), ms(r.p99))
	}
	if r.baseline > 0 {
		s += fmt.Sprintf(" baseline_rate=%.1f ratio=%.3f", r.baseline, r.rate()/r.baseline)
	}
	for _, x := range r.extra {
		s += " " + x
	}
	return s
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted)) + 0.999999999)
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func percentiles(d []time.Duration) (p50, p99 time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	return percentile(s, 50), percentile(s, 99)
}

// order is the message every workload publishes: an order event of about
// 90 bytes of JSON with a content-type header, as a service would send.
type order struct {
	Seq      int    `json:"seq"`
	Customer string `json:"customer"`
	Amount   int64  `json:"amount_cents"`
	Currency string `json:"currency"`
}

var headers = map[string]string{postbox.HeaderContentType: "application/json"}

// newOrder builds message i. keys > 0 gives it one of keys partition keys.
func newOrder(i int, topic string, keys int) (*postbox.Message, order) {
	o := order{Seq: i, Customer: "c-" + strconv.Itoa(i%1000), Amount: 1000 + int64(i%9000), Currency: "EUR"}
	payload, err := json.Marshal(o)
	if err != nil {
		panic(err) // a fixed struct of strings and ints always marshals
	}
	m := &postbox.Message{Topic: topic, Type: "order.created", Payload: payload, Headers: headers}
	if keys > 0 {
		m.Key = "customer-" + strconv.Itoa(i%keys)
	}
	return m, o
}

// seqOf reads the sequence number a bench message carries.
func seqOf(payload []byte) (int, error) {
	var o struct {
		Seq int `json:"seq"`
	}
	if err := json.Unmarshal(payload, &o); err != nil {
		return 0, err
	}
	return o.Seq, nil
}
