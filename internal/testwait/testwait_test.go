package testwait

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// recorder is a testing.TB whose Fatalf records the message and ends the calling goroutine,
// as testing.T's does, so that Eventually's failure can be observed from outside.
type recorder struct {
	testing.TB
	fatal string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// eventually runs Eventually against a recorder and returns what it failed with ("" when it
// returned normally).
func eventually(within time.Duration, check func() error) string {
	r := &recorder{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Eventually(r, within, check)
	}()
	<-done
	return r.fatal
}

func TestEventuallyFailsWithTheLastErrorWhenTheConditionNeverHolds(t *testing.T) {
	calls := 0
	start := time.Now()
	msg := eventually(100*time.Millisecond, func() error {
		calls++
		return fmt.Errorf("still missing after %d checks", calls)
	})
	if msg == "" {
		t.Fatal("Eventually returned although the condition never held")
	}
	if want := fmt.Sprintf("still missing after %d checks", calls); !strings.Contains(msg, want) {
		t.Errorf("failure %q does not carry the last check's error %q", msg, want)
	}
	if !strings.Contains(msg, "100ms") {
		t.Errorf("failure %q does not say how long it waited", msg)
	}
	if calls < 2 {
		t.Errorf("the condition was checked %d times, want it polled", calls)
	}
	if waited := time.Since(start); waited < 100*time.Millisecond {
		t.Errorf("failed after %v, before the 100ms it was given", waited)
	}
}

func TestEventuallyReturnsOnceTheConditionHolds(t *testing.T) {
	calls := 0
	msg := eventually(10*time.Second, func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if msg != "" {
		t.Fatalf("Eventually failed: %s", msg)
	}
	if calls != 3 {
		t.Errorf("the condition was checked %d times, want 3 (no check after it held)", calls)
	}
}

func TestEventuallyWithNoTimeChecksOnce(t *testing.T) {
	if msg := eventually(0, func() error { return nil }); msg != "" {
		t.Fatalf("a condition that holds at once failed: %s", msg)
	}
	if msg := eventually(0, func() error { return errors.New("never") }); !strings.Contains(msg, "never") {
		t.Fatalf("failure %q, want the condition's error", msg)
	}
}
