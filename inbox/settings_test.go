package inbox

import (
	"testing"
	"time"

	"github.com/postbox-dev/postbox/dispatcher"
)

// The retry schedule as a pure function: the wait after failed attempt n
// is its interval, min(Initial × Multiplier^(n-1), Max), with jitter 0.5
// (anywhere from half to one and a half times the interval).
func TestDelaySchedule(t *testing.T) {
	t.Parallel()
	const samples = 200 // per attempt: jitter shows on both sides of the interval
	for _, tc := range []struct {
		name    string
		backoff dispatcher.Backoff
		upTo    int // attempts checked, 1 to upTo
	}{
		{"default", dispatcher.DefaultBackoff, 12},
		{"multiplier 3", dispatcher.Backoff{Initial: 10 * time.Millisecond, Max: time.Hour, Multiplier: 3}, 10},
		{"multiplier 1.5", dispatcher.Backoff{Initial: time.Second, Max: 20 * time.Second, Multiplier: 1.5}, 12},
		{"constant", dispatcher.Backoff{Initial: 5 * time.Second, Max: time.Minute, Multiplier: 1}, 5},
		{"initial above max", dispatcher.Backoff{Initial: time.Minute, Max: time.Second, Multiplier: 2}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := settings{backoff: tc.backoff}
			interval := float64(tc.backoff.Initial)
			for n := 1; n <= tc.upTo; n++ {
				want := min(interval, float64(tc.backoff.Max))
				if n == 1 {
					want = interval // the first wait is Initial's, whatever Max
				}
				lo, hi := time.Duration(0.5*want), time.Duration(1.5*want)+1 // +1ns: the jitter's closed upper end
				below, above := 0, 0
				for range samples {
					d := s.delay(n)
					if d < lo || d > hi {
						t.Fatalf("delay(%d) = %s, want within [%s, %s] (interval %s)", n, d, lo, hi, time.Duration(want))
					}
					if d < time.Duration(want) {
						below++
					} else {
						above++
					}
				}
				if below == 0 || above == 0 {
					t.Errorf("delay(%d): %d of %d samples below the interval %s and %d above: no jitter",
						n, below, samples, time.Duration(want), above)
				}
				interval = float64(time.Duration(want * tc.backoff.Multiplier)) // in whole nanoseconds, as durations are
			}
		})
	}
}

// The wait stops growing at Max, however many attempts failed (past
// maxSteps too), and attempts below 1 count as the first.
func TestDelayCapAndFloor(t *testing.T) {
	t.Parallel()
	b := dispatcher.Backoff{Initial: time.Second, Max: time.Minute, Multiplier: 2}
	s := settings{backoff: b}
	for _, n := range []int{7, 8, 30, maxSteps, maxSteps + 1, 1_000_000} {
		for range 50 {
			if d := s.delay(n); d < b.Max/2 || d > b.Max*3/2+1 {
				t.Fatalf("delay(%d) = %s, want within [%s, %s]: the interval is capped at Max", n, d, b.Max/2, b.Max*3/2)
			}
		}
	}
	for _, n := range []int{0, -1} {
		if d := s.delay(n); d < b.Initial/2 || d > b.Initial*3/2+1 {
			t.Errorf("delay(%d) = %s, want the first attempt's, within [%s, %s]", n, d, b.Initial/2, b.Initial*3/2)
		}
	}
}
