// Package backoff is the one retry delay policy haagent uses: capped exponential, optionally
// with full jitter. The S3 client, the boot runner and the installer download all wait by it.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy doubles Base per attempt up to Max. With Jitter the wait is uniform in [Floor,
// Floor+d): many clients retrying one service (every instance hitting S3 after an outage) do
// not retry in step.
type Policy struct {
	Base, Max time.Duration
	Jitter    bool
	Floor     time.Duration
}

// Delay is the wait before retry n (n from 1; n <= 0 is treated as 1).
func (p Policy) Delay(n int) time.Duration {
	n = max(n, 1)
	d := p.Max
	if shift := n - 1; shift < 30 && p.Base<<shift < p.Max && p.Base<<shift > 0 {
		d = p.Base << shift
	}
	if p.Jitter {
		return p.Floor + time.Duration(rand.Int64N(int64(d)))
	}
	return d
}
