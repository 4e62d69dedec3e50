package asg

import (
	"sync"
	"testing"
)

// The lifecycle-complete step and the asg-lookup monitor meet in State from two goroutines:
// however they interleave, exactly one of them completes the action: the step when the group
// was known first, the monitor when the step asked first.
func TestStateHandsTheCompletionToExactlyOne(t *testing.T) {
	for i := 0; i < 500; i++ {
		var s State
		c := &Client{Group: "g"}
		var wg sync.WaitGroup
		var stepGot *Client
		var complete bool
		wg.Add(2)
		go func() { defer wg.Done(); stepGot = s.WantComplete() }()
		go func() { defer wg.Done(); complete = s.Join(c) }()
		wg.Wait()
		if (stepGot != nil) == complete {
			t.Fatalf("round %d: the step got %v and the lookup's complete is %v: want exactly one to complete", i, stepGot, complete)
		}
		if m, _, cl := s.Snapshot(); m != Member || cl != c {
			t.Fatalf("round %d: state after Join: %v %v", i, m, cl)
		}
	}
}

// The heartbeats monitor marks the action expired only if nobody completed it meanwhile.
func TestMoveLifecycleOnlyFromTheStatesGiven(t *testing.T) {
	var s State
	s.SetLifecycle(LifecycleHeartbeating)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.SetLifecycle(LifecycleCompleted) }()
	go func() { defer wg.Done(); s.MoveLifecycle(LifecycleExpired, LifecyclePending, LifecycleHeartbeating) }()
	wg.Wait()
	if got := s.Lifecycle(); got != LifecycleCompleted {
		t.Fatalf("state %s after a completion, whatever came first", got)
	}
	if s.MoveLifecycle(LifecycleExpired, LifecyclePending, LifecycleHeartbeating) {
		t.Fatal("a completed action was marked expired")
	}
	if !LifecycleHeartbeating.Waiting() || LifecycleCompleted.Waiting() {
		t.Fatal("Waiting")
	}
}
