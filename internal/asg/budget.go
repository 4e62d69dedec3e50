package asg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/haagent/haagent/internal/bucket"
)

// LedgerKey is the object, under the source prefix, that counts replacements across
// instances: a replacement's successor must see its predecessor's requests.
const LedgerKey = "haagent/replacements.json"

// Ledger is the replacement history kept in the bucket.
type Ledger struct {
	Version      int           `json:"version"`
	Replacements []Replacement `json:"replacements"`
}

// Replacement is one granted request.
type Replacement struct {
	InstanceID string    `json:"instance_id"`
	At         time.Time `json:"at"`
	Reason     string    `json:"reason"`
}

// Budget grants at most Max replacements within Window, and at most DailyMax within a day,
// across all instances: a short window alone lets a fault that outlives every instance
// replace one an hour, for days.
type Budget struct {
	Bucket   *bucket.Bucket
	Max      int
	Window   time.Duration
	DailyMax int // 0: no daily cap
}

// day is the long window of DailyMax.
const day = 24 * time.Hour

// SpentError says the budget is used up, and by whom.
type SpentError struct {
	Max    int
	Window time.Duration
	Recent []Replacement
}

func (e *SpentError) Error() string {
	var who []string
	for _, r := range e.Recent {
		who = append(who, fmt.Sprintf("%s at %s", r.InstanceID, r.At.UTC().Format(time.RFC3339)))
	}
	return fmt.Sprintf("the replacement budget is spent: %d of %d within %s (%s)", len(e.Recent), e.Max, e.Window, strings.Join(who, ", "))
}

// Take records a replacement if the budget allows one. The read-modify-write is conditional
// on the object's ETag, so two instances deciding at once cannot both take the last slot.
func (b *Budget) Take(ctx context.Context, r Replacement) error {
	for attempt := 0; attempt < 8; attempt++ {
		led, etag, err := b.read(ctx)
		if err != nil {
			return err
		}
		var recent, daily, keep []Replacement
		for _, x := range led.Replacements {
			if r.At.Sub(x.At) < b.Window {
				recent = append(recent, x)
			}
			if r.At.Sub(x.At) < day {
				daily = append(daily, x)
			}
			// History beyond the window is kept, bounded, for people reading the object.
			if r.At.Sub(x.At) < 30*24*time.Hour {
				keep = append(keep, x)
			}
		}
		if len(recent) >= b.Max {
			return &SpentError{Max: b.Max, Window: b.Window, Recent: recent}
		}
		if b.DailyMax > 0 && len(daily) >= b.DailyMax {
			return &SpentError{Max: b.DailyMax, Window: day, Recent: daily}
		}
		keep = append(keep, r)
		sort.Slice(keep, func(i, j int) bool { return keep[i].At.Before(keep[j].At) })
		if len(keep) > 100 {
			keep = keep[len(keep)-100:]
		}
		data, _ := json.MarshalIndent(Ledger{Version: 1, Replacements: keep}, "", "  ")
		err = b.Bucket.PutIfMatch(ctx, LedgerKey, append(data, '\n'), etag)
		if errors.Is(err, bucket.ErrExists) {
			continue // another instance wrote first: read again and decide again
		}
		if err != nil {
			return fmt.Errorf("recording the replacement in %s: %w", b.Bucket.URI(LedgerKey), err)
		}
		return nil
	}
	return fmt.Errorf("recording the replacement in %s: the ledger kept changing under us", b.Bucket.URI(LedgerKey))
}

func (b *Budget) read(ctx context.Context) (Ledger, string, error) {
	var data []byte
	var etag string
	err := b.Bucket.Get(ctx, LedgerKey, "", func(body io.Reader, m bucket.Meta) error {
		d, err := io.ReadAll(io.LimitReader(body, 1<<20))
		data, etag = d, m.ETag
		return err
	})
	if errors.Is(err, bucket.ErrNotFound) {
		return Ledger{Version: 1}, "", nil
	}
	if err != nil {
		return Ledger{}, "", fmt.Errorf("reading the replacement ledger %s: %w", b.Bucket.URI(LedgerKey), err)
	}
	// Parsed here, not while downloading: a bad ledger is not a transfer error to retry.
	var led Ledger
	if err := json.Unmarshal(data, &led); err != nil {
		// A ledger nobody can read grants nothing: a person must look at it.
		return Ledger{}, "", fmt.Errorf("the replacement ledger %s is not valid JSON (%v); fix or delete it", b.Bucket.URI(LedgerKey), err)
	}
	return led, etag, nil
}
