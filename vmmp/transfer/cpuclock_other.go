//go:build !linux

package transfer

import "time"

// threadCPU cannot be read here: timeCPU falls back to the wall time.
func threadCPU() (time.Duration, bool) { return 0, false }
