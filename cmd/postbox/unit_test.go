package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseMixesFlagsAndArguments(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		pos  []string
		n    int
	}{
		{[]string{"orders", "--n", "3"}, []string{"orders"}, 3},
		{[]string{"--n", "3", "a", "b"}, []string{"a", "b"}, 3},
		{[]string{"a", "--", "--n", "b"}, []string{"a", "--n", "b"}, 0},
		{nil, nil, 0},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			f := newFlags("x", "x", "")
			n := f.Int("n", 0, "")
			pos, err := f.parse(&bytes.Buffer{}, tc.args)
			if err != nil || !slices.Equal(pos, tc.pos) || *n != tc.n {
				t.Errorf("parse(%q) = %q, n=%d, %v; want %q, n=%d", tc.args, pos, *n, err, tc.pos, tc.n)
			}
		})
	}
}

func TestParseTime(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"24h":                  now.Add(-24 * time.Hour),
		"90m":                  now.Add(-90 * time.Minute),
		"2026-02-28T10:00:00Z": time.Date(2026, 2, 28, 10, 0, 0, 0, time.UTC),
		"2026-02-28":           time.Date(2026, 2, 28, 0, 0, 0, 0, time.UTC),
	} {
		t.Run(in, func(t *testing.T) {
			if got, err := parseTime(in, now); err != nil || !got.Equal(want) {
				t.Errorf("parseTime(%q) = %v, %v; want %v", in, got, err, want)
			}
		})
	}
	for _, bad := range []string{"", "yesterday", "-1h", "2026-13-01"} {
		if _, err := parseTime(bad, now); err == nil {
			t.Errorf("parseTime(%q) succeeded", bad)
		}
	}
}

func TestSafeEscapesTerminalControls(t *testing.T) {
	t.Parallel()
	if got := safe("ok\x1b[31mred\ttab\nline"); got != `ok\u001b[31mred`+"\ttab\nline" {
		t.Errorf("safe = %q", got)
	}
	if got := cell("a\x1b]0;title\x07  b\n c", 100); strings.ContainsAny(got, "\x1b\x07\n") {
		t.Errorf("cell = %q", got)
	}
}
