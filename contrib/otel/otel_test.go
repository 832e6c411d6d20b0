package otelpostbox_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/postbox-dev/postbox"
	otelpostbox "github.com/postbox-dev/postbox/contrib/otel"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/postboxtest"
	"github.com/postbox-dev/postbox/relay"
)

// bundle is one test's database, telemetry and in-memory exporters.
type bundle struct {
	pool   *pgxpool.Pool
	tel    *otelpostbox.Telemetry
	tracer trace.Tracer // the application's
	spans  *tracetest.InMemoryExporter
	reader *sdkmetric.ManualReader
}

// setup declares subscriber billing on order.* and returns the bundle.
func setup(t *testing.T, parentChild bool) *bundle {
	t.Helper()
	ctx := context.Background()
	b := &bundle{pool: postboxtest.Pool(t), spans: tracetest.NewInMemoryExporter(), reader: sdkmetric.NewManualReader()}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(b.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(b.reader))
	b.tracer = tp.Tracer("app")
	var err error
	b.tel, err = otelpostbox.New(otelpostbox.Config{TracerProvider: tp, MeterProvider: mp, ParentChild: parentChild})
	if err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.DeclareSubscriber(ctx, b.pool, "billing", dispatcher.Options{MaxAttempts: 1}); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.Subscribe(ctx, b.pool, dispatcher.Subscription{Subscriber: "billing", Topic: "order.*"}); err != nil {
		t.Fatal(err)
	}
	return b
}

// run relays and consumes billing with h behind the middleware, until
// nothing is left.
func (b *bundle) run(t *testing.T, h inbox.HandlerFunc) {
	t.Helper()
	r, err := relay.New(b.pool, relay.Config{OnBatch: b.tel.OnRelayBatch})
	if err != nil {
		t.Fatal(err)
	}
	c, err := inbox.NewConsumer(b.pool, inbox.Config{Subscriber: "billing", NoListen: true,
		Handler: inbox.Chain(h, b.tel.Middleware()), OnBatch: b.tel.OnConsumerBatch})
	if err != nil {
		t.Fatal(err)
	}
	postboxtest.DrainRelay(context.Background(), t, r, c)
}

// span returns the one ended span named name.
func (b *bundle) span(t *testing.T, name string) tracetest.SpanStub {
	t.Helper()
	var found []tracetest.SpanStub
	for _, s := range b.spans.GetSpans() {
		if s.Name == name {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		var names []string
		for _, s := range b.spans.GetSpans() {
			names = append(names, s.Name)
		}
		t.Fatalf("%d spans named %q, want 1; spans: %q", len(found), name, names)
	}
	return found[0]
}

// requireAttrs checks span attributes by their names in the conventions.
func requireAttrs(t *testing.T, s tracetest.SpanStub, want map[string]any) {
	t.Helper()
	got := map[string]attribute.Value{}
	for _, kv := range s.Attributes {
		got[string(kv.Key)] = kv.Value
	}
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("span %q has no attribute %s", s.Name, k)
			continue
		}
		if fmt.Sprint(g.AsInterface()) != fmt.Sprint(v) {
			t.Errorf("span %q: %s = %v, want %v", s.Name, k, g.AsInterface(), v)
		}
	}
}

// metrics collects the reader's metrics by name.
func (b *bundle) metrics(t *testing.T) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := b.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// has reports whether set holds every attribute of want.
func has(set attribute.Set, want map[string]string) bool {
	for k, v := range want {
		if got, ok := set.Value(attribute.Key(k)); !ok || got.String() != v {
			return false
		}
	}
	return true
}

// counted is the sum of the counter name's points with the attributes of want.
func counted(t *testing.T, ms map[string]metricdata.Metrics, name string, want map[string]string) int64 {
	t.Helper()
	m, ok := ms[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
	sum, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		t.Fatalf("%s is %T, want an int64 sum", name, m.Data)
	}
	var n int64
	for _, p := range sum.DataPoints {
		if has(p.Attributes, want) {
			n += p.Value
		}
	}
	return n
}

// recorded is the count of the histogram name's points with want.
func recorded(t *testing.T, ms map[string]metricdata.Metrics, name string, want map[string]string) uint64 {
	t.Helper()
	m, ok := ms[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
	h, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("%s is %T, want a float64 histogram", name, m.Data)
	}
	var n uint64
	for _, p := range h.DataPoints {
		if has(p.Attributes, want) {
			n += p.Count
		}
	}
	return n
}

// One trace from the application's span through publish, relay and handle,
// and on to what the handler publishes, with ParentChild; the conventions'
// attribute names on each span; the three metrics.
func TestOneTraceAcrossPublishRelayHandle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, true)

	ctx, checkout := b.tracer.Start(ctx, "checkout")
	msg := &postbox.Message{Topic: "order.created", Type: "order.created.v1", Key: "ord-1", Payload: []byte(`{"orderId":"ord-1"}`),
		Headers: map[string]string{postbox.HeaderCorrelationID: "conv-1"}}
	err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error { return b.tel.Publish(ctx, tx, msg) })
	checkout.End()
	if err != nil {
		t.Fatal(err)
	}
	var seen map[string]string
	b.run(t, func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		seen = d.Headers
		return b.tel.Publish(ctx, tx, &postbox.Message{Topic: "billing.invoiced", Key: d.Key})
	})

	root := b.span(t, "checkout")
	send := b.span(t, "send order.created")
	process := b.span(t, "process order.created")
	invoiced := b.span(t, "send billing.invoiced")
	var relays []tracetest.SpanStub
	for _, s := range b.spans.GetSpans() {
		if s.Name == "relay" {
			relays = append(relays, s)
		}
	}
	if len(relays) != 2 {
		t.Fatalf("%d relay spans, want one for order.created and one for billing.invoiced", len(relays))
	}
	traceID := root.SpanContext.TraceID()
	for _, s := range append([]tracetest.SpanStub{send, process, invoiced}, relays...) {
		if s.SpanContext.TraceID() != traceID {
			t.Errorf("span %q is in trace %s, want %s", s.Name, s.SpanContext.TraceID(), traceID)
		}
	}
	parents := []struct {
		child, parent tracetest.SpanStub
	}{{send, root}, {relays[0], send}, {process, send}, {invoiced, process}, {relays[1], invoiced}}
	for _, p := range parents {
		if p.child.Parent.SpanID() != p.parent.SpanContext.SpanID() {
			t.Errorf("span %q's parent is %s, want %q (%s)", p.child.Name, p.child.Parent.SpanID(), p.parent.Name, p.parent.SpanContext.SpanID())
		}
	}
	if want := fmt.Sprintf("00-%s-%s-01", traceID, send.SpanContext.SpanID()); seen[postbox.HeaderTraceParent] != want {
		t.Errorf("the delivery's traceparent is %q, want the send span's %q", seen[postbox.HeaderTraceParent], want)
	}

	if send.SpanKind != trace.SpanKindProducer || process.SpanKind != trace.SpanKindConsumer || relays[0].SpanKind != trace.SpanKindClient {
		t.Errorf("span kinds: send %s, process %s, relay %s; want producer, consumer, client", send.SpanKind, process.SpanKind, relays[0].SpanKind)
	}
	requireAttrs(t, send, map[string]any{
		"messaging.system":                  "postbox",
		"messaging.operation.name":          "send",
		"messaging.operation.type":          "send",
		"messaging.destination.name":        "order.created",
		"messaging.message.id":              msg.ID.String(),
		"messaging.message.conversation_id": "conv-1",
		"messaging.message.body.size":       len(msg.Payload),
		"messaging.postbox.message.key":     "ord-1",
	})
	requireAttrs(t, relays[0], map[string]any{
		"messaging.system":                    "postbox",
		"messaging.operation.name":            "relay",
		"messaging.operation.type":            "send",
		"messaging.batch.message_count":       1,
		"messaging.postbox.relay.subscribers": []string{"billing"},
	})
	requireAttrs(t, process, map[string]any{
		"messaging.system":                   "postbox",
		"messaging.operation.name":           "process",
		"messaging.operation.type":           "process",
		"messaging.destination.name":         "order.created",
		"messaging.consumer.group.name":      "billing",
		"messaging.message.id":               msg.ID.String(),
		"messaging.message.conversation_id":  "conv-1",
		"messaging.postbox.delivery.attempt": 1,
	})
	// What the handler published carries the conversation on.
	requireAttrs(t, invoiced, map[string]any{"messaging.message.conversation_id": "conv-1"})
	if process.Status.Code != codes.Unset {
		t.Errorf("process status %v, want unset", process.Status)
	}

	ms := b.metrics(t)
	for _, topic := range []string{"order.created", "billing.invoiced"} {
		if n := counted(t, ms, "messaging.client.sent.messages", map[string]string{
			"messaging.system": "postbox", "messaging.operation.name": "send", "messaging.destination.name": topic}); n != 1 {
			t.Errorf("messaging.client.sent.messages for %s = %d, want 1", topic, n)
		}
	}
	if n := counted(t, ms, "messaging.client.consumed.messages", map[string]string{
		"messaging.system": "postbox", "messaging.operation.name": "process",
		"messaging.destination.name": "order.created", "messaging.consumer.group.name": "billing"}); n != 1 {
		t.Errorf("messaging.client.consumed.messages = %d, want 1", n)
	}
	if n := recorded(t, ms, "messaging.process.duration", map[string]string{
		"messaging.system": "postbox", "messaging.operation.name": "process", "messaging.destination.name": "order.created"}); n != 1 {
		t.Errorf("messaging.process.duration has %d points, want 1", n)
	}
}

// By default a process span starts a trace of its own, linked to the
// creation context, as are relay spans; a failing handler sets the error
// status and error.type on the span and the duration.
func TestLinksByDefaultAndErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, false)
	msg := &postbox.Message{Topic: "order.created", Key: "ord-2"}
	if err := b.tel.Publish(ctx, b.pool, msg); err != nil {
		t.Fatal(err)
	}
	b.run(t, func(context.Context, pgx.Tx, *inbox.Delivery) error {
		return postbox.Permanent(errors.New("no such customer"))
	})
	send, process, rel := b.span(t, "send order.created"), b.span(t, "process order.created"), b.span(t, "relay")
	for _, s := range []tracetest.SpanStub{process, rel} {
		if s.SpanContext.TraceID() == send.SpanContext.TraceID() || s.Parent.IsValid() {
			t.Errorf("span %q is in the send span's trace, or has a parent", s.Name)
		}
		if len(s.Links) != 1 || !s.Links[0].SpanContext.Equal(send.SpanContext.WithRemote(true)) {
			t.Errorf("span %q links %v, want the send span %v", s.Name, s.Links, send.SpanContext)
		}
	}
	if process.Status.Code != codes.Error || process.Status.Description != "permanent: no such customer" {
		t.Errorf("process status %+v, want the error", process.Status)
	}
	requireAttrs(t, process, map[string]any{"error.type": "permanent"})
	if len(process.Events) != 1 || process.Events[0].Name != "exception" {
		t.Errorf("process events %v, want the exception recorded", process.Events)
	}
	ms := b.metrics(t)
	if n := recorded(t, ms, "messaging.process.duration", map[string]string{"error.type": "permanent"}); n != 1 {
		t.Errorf("messaging.process.duration with error.type=permanent: %d points, want 1", n)
	}
	if n := counted(t, ms, "messaging.client.consumed.messages", map[string]string{"messaging.consumer.group.name": "billing"}); n != 1 {
		t.Errorf("messaging.client.consumed.messages = %d, want the dead delivery counted", n)
	}
}

// A batch gets a send span linked to a create span per message, each the
// creation context of its message; a message with a creation context of
// its own keeps it. The relay span links to every moved message.
func TestBatchCreationContexts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, false)
	ctx, app := b.tracer.Start(ctx, "import")
	_, own := b.tracer.Start(ctx, "upstream")
	own.End()
	custom := fmt.Sprintf("00-%s-%s-01", own.SpanContext().TraceID(), own.SpanContext().SpanID())
	shared := map[string]string{"x-source": "import"}
	msgs := []*postbox.Message{
		{Topic: "order.created", Key: "a", Headers: shared},
		{Topic: "order.created", Key: "b", Headers: shared},
		{Topic: "order.created", Key: "c", Headers: map[string]string{postbox.HeaderTraceParent: custom}},
	}
	err := b.tel.PublishBatch(ctx, b.pool, msgs)
	app.End()
	if err != nil {
		t.Fatal(err)
	}
	if len(shared) != 1 {
		t.Errorf("the caller's shared header map was changed: %v", shared)
	}
	send := b.span(t, "send order.created")
	if send.SpanKind != trace.SpanKindClient {
		t.Errorf("batch send span kind %s, want client (the create spans are the creation contexts)", send.SpanKind)
	}
	requireAttrs(t, send, map[string]any{"messaging.operation.type": "send", "messaging.batch.message_count": 3})
	var creates []tracetest.SpanStub
	for _, s := range b.spans.GetSpans() {
		if s.Name == "create order.created" {
			creates = append(creates, s)
			requireAttrs(t, s, map[string]any{"messaging.operation.name": "create", "messaging.operation.type": "create"})
		}
	}
	if len(creates) != 2 {
		t.Fatalf("%d create spans, want 2 (the third message brought its own context)", len(creates))
	}
	wantLinks := map[string]bool{custom: true}
	for i, c := range creates {
		tp := fmt.Sprintf("00-%s-%s-01", c.SpanContext.TraceID(), c.SpanContext.SpanID())
		wantLinks[tp] = true
		if msgs[i].Headers[postbox.HeaderTraceParent] != tp || msgs[i].Headers["x-source"] != "import" {
			t.Errorf("message %d headers %v, want traceparent %s and its own headers", i, msgs[i].Headers, tp)
		}
	}
	if msgs[2].Headers[postbox.HeaderTraceParent] != custom {
		t.Errorf("the message's own creation context became %q", msgs[2].Headers[postbox.HeaderTraceParent])
	}
	linked := func(s tracetest.SpanStub) map[string]bool {
		out := map[string]bool{}
		for _, l := range s.Links {
			out[fmt.Sprintf("00-%s-%s-01", l.SpanContext.TraceID(), l.SpanContext.SpanID())] = true
		}
		return out
	}
	if got := linked(send); fmt.Sprint(got) != fmt.Sprint(wantLinks) {
		t.Errorf("send span links %v, want %v", got, wantLinks)
	}
	b.run(t, func(context.Context, pgx.Tx, *inbox.Delivery) error { return nil })
	if got := linked(b.span(t, "relay")); fmt.Sprint(got) != fmt.Sprint(wantLinks) {
		t.Errorf("relay span links %v, want %v", got, wantLinks)
	}
	if n := counted(t, b.metrics(t), "messaging.client.sent.messages", map[string]string{"messaging.destination.name": "order.created"}); n != 3 {
		t.Errorf("messaging.client.sent.messages = %d, want 3", n)
	}
}

// A failed publish is a failed send span, counted with its error.type;
// Produce traces any producer, here the database/sql one.
func TestProduceFailuresAndOtherProducers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, false)
	err := b.tel.Send(ctx, b.pool, &postbox.Message{Topic: "Not A Queue"})
	if !errors.Is(err, postbox.ErrInvalid) {
		t.Fatalf("err %v, want a validation error", err)
	}
	failed := b.span(t, "send Not A Queue")
	if failed.Status.Code != codes.Error {
		t.Errorf("status %+v, want an error", failed.Status)
	}
	requireAttrs(t, failed, map[string]any{"error.type": "invalid", "messaging.postbox.destination.queue": true})

	sdb := stdlibDB(t, b.pool)
	msg := &postbox.Message{Topic: "order.created"}
	if err := b.tel.Produce(ctx, []*postbox.Message{msg}, false, func(ctx context.Context) error {
		return outbox.PublishSQL(ctx, sdb, msg)
	}); err != nil {
		t.Fatal(err)
	}
	requireAttrs(t, b.span(t, "send order.created"), map[string]any{"messaging.message.id": msg.ID.String()})
	postboxtest.RequirePublishedTx(ctx, t, b.pool, postboxtest.Want{Topic: "order.created",
		Headers: map[string]string{postbox.HeaderTraceParent: msg.Headers[postbox.HeaderTraceParent]}})

	ms := b.metrics(t)
	if n := counted(t, ms, "messaging.client.sent.messages", map[string]string{"error.type": "invalid"}); n != 1 {
		t.Errorf("failed sends counted %d, want 1", n)
	}
	if n := counted(t, ms, "messaging.client.sent.messages", map[string]string{"messaging.destination.name": "order.created"}); n != 1 {
		t.Errorf("sends through database/sql counted %d, want 1", n)
	}
}

// A delivery handed back (inbox.ErrRelease) is no failure, and the
// consumer still sees the release; a panic fails the span and still
// reaches the consumer, which makes it a failed attempt.
func TestReleaseAndPanic(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, false)
	for _, key := range []string{"release", "panic"} {
		if err := b.tel.Publish(ctx, b.pool, &postbox.Message{Topic: "order." + key, Key: key}); err != nil {
			t.Fatal(err)
		}
	}
	released := 0
	b.run(t, func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		switch {
		case d.Key == "panic":
			panic("boom")
		case released == 0:
			released++
			return inbox.ErrRelease
		}
		return nil
	})
	var releases, handled int
	for _, s := range b.spans.GetSpans() {
		if s.Name != "process order.release" {
			continue
		}
		if s.Status.Code != codes.Unset {
			t.Errorf("a release's process span has status %+v, want unset", s.Status)
		}
		for _, kv := range s.Attributes {
			if kv.Key == "messaging.postbox.delivery.released" && kv.Value.AsBool() {
				releases++
			}
		}
		handled++
	}
	// A batch may run a handler more than once (see Middleware): at least
	// the release and the run that handled it.
	if releases != 1 || handled < 2 {
		t.Errorf("%d process spans for the released message, %d marked released; want 2 or more and 1", handled, releases)
	}
	boom := b.span(t, "process order.panic")
	if boom.Status.Code != codes.Error || boom.Status.Description != "handler panicked: boom" {
		t.Errorf("panic span status %+v, want the panic as an error", boom.Status)
	}
	var dead int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM postbox.dead_letters WHERE key = 'panic'`).Scan(&dead); err != nil || dead != 1 {
		t.Errorf("%d dead letters for the panic (%v), want 1: the consumer saw the panic", dead, err)
	}
}
