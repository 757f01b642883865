package node

import (
	"context"
	"errors"
	"sync"
)

// Events is a node's typed event stream: the services publish what happened (a VM's status
// changed, a lease was countersigned or ended, a machine was added), and the ledger, the web UI
// and notices subscribe. An event is any value; each publishing package declares its event
// types (vm.StatusChanged, market.LeaseCreated, ...) and subscribers switch on them.
//
// Publish never blocks and never drops: every subscription queues what it has not taken yet,
// so a slow subscriber cannot stall the VM operation that published (which holds the VM's
// lock). A subscriber that falls more than its queue limit behind is cut off, and its Err says
// so, instead of silently missing events: it must resynchronise from state, not guess.
type Events struct {
	mu   sync.Mutex
	subs map[*Subscription]struct{}
}

// NewEvents returns an event stream with no subscribers.
func NewEvents() *Events { return &Events{subs: map[*Subscription]struct{}{}} }

// DefaultEventQueue is how many events a subscription holds before it is cut off.
const DefaultEventQueue = 1 << 16

// ErrEventsOverflow is a subscription's error when it fell too far behind and was cut off.
var ErrEventsOverflow = errors.New("event subscriber fell more than its queue behind and was cut off")

// ErrSubscriptionClosed is what Wait returns after Close.
var ErrSubscriptionClosed = errors.New("event subscription closed")

// Subscription receives the events published after it was made, in order.
type Subscription struct {
	ev    *Events
	limit int

	mu     sync.Mutex
	queue  []any
	ready  chan struct{} // holds a token while queue is non-empty or the subscription ended
	err    error
	closed bool
}

// Subscribe starts a subscription holding at most limit untaken events (DefaultEventQueue if
// limit ≤ 0). Close it when done.
func (e *Events) Subscribe(limit int) *Subscription {
	if limit <= 0 {
		limit = DefaultEventQueue
	}
	s := &Subscription{ev: e, limit: limit, ready: make(chan struct{}, 1)}
	e.mu.Lock()
	e.subs[s] = struct{}{}
	e.mu.Unlock()
	return s
}

// Publish hands ev to every subscription; it returns at once.
func (e *Events) Publish(ev any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for s := range e.subs {
		if !s.push(ev) {
			delete(e.subs, s)
		}
	}
}

// push queues ev; false when the subscription ended (closed or overflowed).
func (s *Subscription) push(ev any) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if len(s.queue) >= s.limit {
		s.queue, s.err, s.closed = nil, ErrEventsOverflow, true
		s.signal()
		return false
	}
	s.queue = append(s.queue, ev)
	s.signal()
	return true
}

func (s *Subscription) signal() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Ready is signalled when Next has something to return (or the subscription ended).
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

// Next returns the oldest untaken event, or false when there is none now.
func (s *Subscription) Next() (any, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return nil, false
	}
	ev := s.queue[0]
	s.queue[0] = nil
	s.queue = s.queue[1:]
	if len(s.queue) > 0 {
		s.signal()
	}
	return ev, true
}

// Wait returns the oldest untaken event, waiting for one until ctx is done or the
// subscription ends (ErrEventsOverflow, ErrSubscriptionClosed).
func (s *Subscription) Wait(ctx context.Context) (any, error) {
	for {
		if ev, ok := s.Next(); ok {
			return ev, nil
		}
		s.mu.Lock()
		closed, err := s.closed, s.err
		s.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if closed {
			return nil, ErrSubscriptionClosed
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.ready:
		}
	}
}

// Err is ErrEventsOverflow once the subscription was cut off, nil otherwise.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.ev.mu.Lock()
	delete(s.ev.subs, s)
	s.ev.mu.Unlock()
	s.mu.Lock()
	s.closed, s.queue = true, nil
	s.signal()
	s.mu.Unlock()
}
