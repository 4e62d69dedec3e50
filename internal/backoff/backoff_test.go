package backoff

import (
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	p := Policy{Base: 5 * time.Second, Max: 5 * time.Minute}
	for n, want := range map[int]time.Duration{0: 5 * time.Second, 1: 5 * time.Second, 2: 10 * time.Second, 7: 5 * time.Minute, 100: 5 * time.Minute} {
		if got := p.Delay(n); got != want {
			t.Errorf("Delay(%d) = %s, want %s", n, got, want)
		}
	}
	j := Policy{Base: 250 * time.Millisecond, Max: 10 * time.Second, Jitter: true, Floor: 50 * time.Millisecond}
	for n := 1; n < 50; n++ {
		cap := min(250*time.Millisecond<<min(n-1, 20), 10*time.Second)
		if d := j.Delay(n); d < 50*time.Millisecond || d >= 50*time.Millisecond+cap {
			t.Fatalf("Delay(%d) = %s, outside [50ms, 50ms+%s)", n, d, cap)
		}
	}
}
