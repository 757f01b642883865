// Package testwait waits in tests for what other goroutines or processes do: a condition is
// polled at a short interval until it holds or a time limit passes, and then the test fails
// with the condition's own account of what is still missing.
package testwait

import (
	"testing"
	"time"
)

// Interval is how often Eventually checks its condition.
const Interval = 20 * time.Millisecond

// Eventually calls check until it returns nil, and fails t with check's last error when that
// has not happened within the given time. The error says what is still missing, so a failing
// test reports the state it saw last, not only that it waited.
func Eventually(t testing.TB, within time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", within, err)
			return // a testing.TB whose Fatalf returns still stops the polling
		}
		time.Sleep(Interval)
	}
}
