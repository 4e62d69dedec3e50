package asg

import "sync"

// Membership is what haagent knows of the instance's Auto Scaling group.
type Membership int

// Memberships.
const (
	MemberUnknown Membership = iota // not asked yet, or the lookup failed (a monitor retries it)
	Member                          // the group is known: State.Client is set
	NotMember                       // the instance is in no group
	Disabled                        // asg.enabled: false, or no client could be set up
)

func (m Membership) String() string {
	return [...]string{"unknown", "member", "not a member", "disabled"}[m]
}

// Lifecycle is the state of the instance's launch lifecycle action, as haagent knows it.
type Lifecycle int

// Lifecycle states. Only Pending and Heartbeating mean an action waits for this instance.
const (
	LifecycleUnknown      Lifecycle = iota // not asked, or the question failed
	LifecyclePending                       // a heartbeat went through: the action waits for us
	LifecycleHeartbeating                  // it waits and the heartbeats monitor keeps it alive
	LifecycleCompleted                     // CompleteLifecycleAction went through: in service
	LifecycleExpired                       // it ended before the boot completed it
	LifecycleNone                          // none waits (a reboot, or the group put it in service)
)

func (l Lifecycle) String() string {
	return [...]string{"unknown", "pending", "heartbeating", "completed", "expired", "none"}[l]
}

// Waiting reports whether the action still waits for this instance.
func (l Lifecycle) Waiting() bool { return l == LifecyclePending || l == LifecycleHeartbeating }

// State is the one home of the Auto Scaling state of this instance: the group membership,
// the launch lifecycle action, and whether the boot has asked for the lifecycle completion. The boot steps and the monitors read and change it
// concurrently (the lookup may succeed in a monitor long after the asg step), so every read
// and change goes through its methods, each one a single step under its lock.
type State struct {
	mu         sync.Mutex
	membership Membership
	client     *Client
	lifecycle  Lifecycle
	// completeWanted: the boot reached the point where it completes the action (its frontend
	// is up).
	completeWanted bool
}

// Snapshot returns the membership, the lifecycle action's state and the client (nil unless a
// member).
func (s *State) Snapshot() (Membership, Lifecycle, *Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.membership, s.lifecycle, s.client
}

// Client is the group's client, or nil while the group is not known.
func (s *State) Client() *Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.client
}

// SetMembership records an outcome without a client (not a member, disabled, unknown).
func (s *State) SetMembership(m Membership) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.membership = m
	if m != Member {
		s.client = nil
	}
}

// Join records that the instance is in c's group. It returns whether the boot asked for the
// lifecycle completion before the group was known: the caller then completes the action.
func (s *State) Join(c *Client) (complete bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.membership, s.client = Member, c
	return s.completeWanted
}

// Lifecycle returns the lifecycle action's state.
func (s *State) Lifecycle() Lifecycle {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lifecycle
}

// SetLifecycle records the lifecycle action's state.
func (s *State) SetLifecycle(l Lifecycle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lifecycle = l
}

// MoveLifecycle sets the state to `to` only if it is one of `from`, and reports whether it did:
// the heartbeats monitor marks the action expired only if nobody completed it meanwhile.
func (s *State) MoveLifecycle(to Lifecycle, from ...Lifecycle) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range from {
		if s.lifecycle == f {
			s.lifecycle = to
			return true
		}
	}
	return false
}

// WantComplete records that the boot is ready to complete the lifecycle action, and returns
// the client if the group is known (the caller completes it now); nil means whoever joins the
// group later does (Join's complete).
func (s *State) WantComplete() *Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.completeWanted = true
	return s.client
}
