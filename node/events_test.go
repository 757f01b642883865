package node_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/node"
)

// TestEvents: subscribers get every event published after they subscribed, in order; a
// subscriber that does not read never blocks the publisher; one that falls more than its
// queue behind is cut off with an error instead of missing events silently.
func TestEvents(t *testing.T) {
	ev := node.NewEvents()
	early := ev.Subscribe(0)
	defer early.Close()
	ev.Publish("before")
	late := ev.Subscribe(0)
	defer late.Close()
	small := ev.Subscribe(3)

	// Nobody reads while a thousand events are published: Publish must return.
	done := make(chan struct{})
	go func() {
		for i := range 1000 {
			ev.Publish(i)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Publish blocked on subscribers that do not read")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if got, err := early.Wait(ctx); err != nil || got != "before" {
		t.Fatalf("early subscriber's first event: %v, %v", got, err)
	}
	for i := range 1000 {
		if got, err := early.Wait(ctx); err != nil || got != i {
			t.Fatalf("early subscriber's event %d: %v, %v", i, got, err)
		}
		if got, err := late.Wait(ctx); err != nil || got != i {
			t.Fatalf("late subscriber's event %d: %v, %v (it must not see what came before it)", i, got, err)
		}
	}
	if _, err := small.Wait(ctx); !errors.Is(err, node.ErrEventsOverflow) {
		t.Fatalf("a subscriber past its queue: %v, want ErrEventsOverflow", err)
	}
	if small.Err() == nil {
		t.Fatal("the cut-off subscription has no error")
	}

	// Wait returns as soon as an event comes, and ends with the context or Close.
	go func() {
		time.Sleep(10 * time.Millisecond)
		ev.Publish("later")
	}()
	if got, err := late.Wait(ctx); err != nil || got != "later" {
		t.Fatalf("waiting for an event: %v, %v", got, err)
	}
	short, stop := context.WithTimeout(ctx, 20*time.Millisecond)
	defer stop()
	if _, err := late.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait with nothing published: %v", err)
	}
	late.Close()
	if _, err := late.Wait(ctx); !errors.Is(err, node.ErrSubscriptionClosed) {
		t.Fatalf("wait after Close: %v", err)
	}
	ev.Publish("after close") // a closed subscription is dropped, not written to
}
