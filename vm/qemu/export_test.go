package qemu

import "context"

// SetCompressor makes suspend attempts run the given command instead of zstd to read the
// migration stream, so tests can make QEMU's migration fail for real. Set it before use.
func SetCompressor(d *Driver, f func(attempt int) []string) { d.testHooks.compressor = f }

// ProbeKernel runs the kernel probe under accel, as the KVM probe does under KVM.
func ProbeKernel(ctx context.Context, cfg Config, accel string) (string, error) {
	cfg.fill()
	return probeKernel(ctx, cfg, accel)
}

// SetAnonymousRAM makes VMs started from now on keep their memory out of a file, as drivers did
// before memory.ram, so that their suspends save the earlier format. Set it before use.
func SetAnonymousRAM(d *Driver, on bool) { d.testHooks.anonymousRAM = on }
