package postboxtest

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/headers"
)

// Published is a message in the outbox, as a producer wrote it.
type Published struct {
	postbox.Message
	// Queue reports a point-to-point send (outbox.Send) to the queue named
	// by Topic, rather than a publish to a topic.
	Queue bool
}

// Want selects published messages. Every zero field means "any"; the
// fields that are set must all match.
type Want struct {
	// Topic is the topic, or the queue name of a send.
	Topic string
	// Queue, when true, selects only sends to a queue (outbox.Send); when
	// false, publishes and sends alike.
	Queue bool
	Type  string
	Key   string
	// Payload holds fields the JSON payload must have, with these values:
	// nested objects match when they hold the fields given (as PostgreSQL's
	// jsonb @>), other values when they are equal as JSON, so 5 matches
	// 5.0. A payload that is not a JSON object matches no Payload.
	Payload map[string]any
	// Headers the message must carry, with these values.
	Headers map[string]string
}

// Matches reports whether p is a message w selects.
func (w Want) Matches(p *Published) bool {
	switch {
	case w.Topic != "" && p.Topic != w.Topic,
		w.Queue && !p.Queue,
		w.Type != "" && p.Type != w.Type,
		w.Key != "" && p.Key != w.Key:
		return false
	}
	for k, v := range w.Headers {
		if got, ok := p.Headers[k]; !ok || got != v {
			return false
		}
	}
	if w.Payload == nil {
		return true
	}
	want, err := normalize(w.Payload)
	if err != nil {
		return false
	}
	var got any
	if err := json.Unmarshal(p.Payload, &got); err != nil {
		return false
	}
	return contains(got, want)
}

func (w Want) String() string {
	var parts []string
	add := func(name, v string) {
		if v != "" {
			parts = append(parts, name+"="+v)
		}
	}
	add("topic", w.Topic)
	if w.Queue {
		parts = append(parts, "queue")
	}
	add("type", w.Type)
	add("key", w.Key)
	if w.Payload != nil {
		b, _ := json.Marshal(w.Payload)
		add("payload", string(b))
	}
	for _, k := range slices.Sorted(maps.Keys(w.Headers)) {
		add("header "+k, w.Headers[k])
	}
	if len(parts) == 0 {
		return "{any message}"
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// normalize turns v into what encoding/json decodes from its encoding, so
// that Go values compare with decoded payloads.
func normalize(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out any
	err = json.Unmarshal(b, &out)
	return out, err
}

// contains reports whether got holds want: every field of a wanted object,
// recursively; anything else, equal.
func contains(got, want any) bool {
	wm, ok := want.(map[string]any)
	if !ok {
		return reflect.DeepEqual(got, want)
	}
	gm, ok := got.(map[string]any)
	if !ok {
		return false
	}
	for k, wv := range wm {
		gv, ok := gm[k]
		if !ok || !contains(gv, wv) {
			return false
		}
	}
	return true
}

// RequirePublishedTx requires that exactly one message in the outbox, as
// tx sees it, matches want, and returns it. It fails tb, listing what the
// outbox holds, when none or several do.
func RequirePublishedTx(ctx context.Context, tb testing.TB, tx postbox.DBTX, want Want) *Published {
	tb.Helper()
	all := outboxMessages(ctx, tb, tx)
	var found []*Published
	for _, p := range all {
		if want.Matches(p) {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 1:
		return found[0]
	case 0:
		tb.Fatalf("postboxtest: no published message matches %s; the outbox holds%s", want, describe(all))
	default:
		tb.Fatalf("postboxtest: %d published messages match %s, want exactly one (RequireManyPublishedTx checks several):%s",
			len(found), want, describe(found))
	}
	return nil
}

// RequireManyPublishedTx requires that the messages in the outbox, as tx
// sees it, that match any of wants are exactly len(wants) messages, the
// i-th matching wants[i], in publish order; other messages are ignored. It
// returns them.
func RequireManyPublishedTx(ctx context.Context, tb testing.TB, tx postbox.DBTX, wants []Want) []*Published {
	tb.Helper()
	all := outboxMessages(ctx, tb, tx)
	var found []*Published
	for _, p := range all {
		for _, w := range wants {
			if w.Matches(p) {
				found = append(found, p)
				break
			}
		}
	}
	ok := len(found) == len(wants)
	for i := 0; ok && i < len(wants); i++ {
		ok = wants[i].Matches(found[i])
	}
	if !ok {
		var want strings.Builder
		for i, w := range wants {
			fmt.Fprintf(&want, "\n  %d: %s", i, w)
		}
		tb.Fatalf("postboxtest: published messages do not match, in order:%s\nthe outbox holds, of those selected,%s",
			want.String(), describe(found))
	}
	return found
}

// RequireNotPublishedTx requires that no message in the outbox, as tx
// sees it, matches want.
func RequireNotPublishedTx(ctx context.Context, tb testing.TB, tx postbox.DBTX, want Want) {
	tb.Helper()
	var found []*Published
	for _, p := range outboxMessages(ctx, tb, tx) {
		if want.Matches(p) {
			found = append(found, p)
		}
	}
	if len(found) > 0 {
		tb.Fatalf("postboxtest: %d published messages match %s, want none:%s", len(found), want, describe(found))
	}
}

// outboxMessages returns the outbox rows db sees.
func outboxMessages(ctx context.Context, tb testing.TB, dbtx postbox.DBTX) []*Published {
	tb.Helper()
	msgs, err := readOutbox(ctx, dbtx, 0)
	if err != nil {
		tb.Fatalf("postboxtest: read the outbox: %v", err)
	}
	return msgs
}

// readOutbox returns the outbox rows of ids above after, in publish order.
// The outbox is the one postbox table the package reads: it has no public
// reader.
func readOutbox(ctx context.Context, dbtx postbox.DBTX, after int64) ([]*Published, error) {
	rows, err := db.New(dbtx).OutboxRowsAfter(ctx, after)
	if err != nil {
		return nil, err
	}
	out := make([]*Published, 0, len(rows))
	for _, r := range rows {
		p := &Published{Message: postbox.Message{ID: r.MessageID.Bytes, Topic: r.Topic, Type: r.Type, Key: r.Key,
			Payload: r.Payload, CreatedAt: r.CreatedAt}, Queue: r.IsQueue}
		if p.Headers, err = headers.Decode(r.Headers); err != nil {
			return nil, fmt.Errorf("headers of %s: %w", p.ID, err)
		}
		if r.DeliverAt != nil {
			p.DeliverAt = *r.DeliverAt
		}
		out = append(out, p)
	}
	return out, nil
}

// describe lists messages for a failure message.
func describe(msgs []*Published) string {
	if len(msgs) == 0 {
		return " nothing"
	}
	var b strings.Builder
	for _, p := range msgs {
		kind := "topic"
		if p.Queue {
			kind = "queue"
		}
		payload := string(p.Payload)
		if len(payload) > 200 {
			payload = payload[:200] + "…"
		}
		fmt.Fprintf(&b, "\n  %s %s type=%q key=%q payload=%s", kind, p.Topic, p.Type, p.Key, payload)
		for _, k := range slices.Sorted(maps.Keys(p.Headers)) {
			fmt.Fprintf(&b, " %s=%q", k, p.Headers[k])
		}
	}
	return b.String()
}
