// Package qemu is the vm.Driver for QEMU: real qemu-system-x86_64 processes controlled over QMP,
// disks made with qemu-img, consoles over VNC.
//
// Each VM lives in its own directory, Dir/vms/<id>:
//
//	vm.json       the definition: the vm.Config it was created from and the file names below
//	disk.raw      the disk (or disk.qcow2), sparse
//	vmlinuz       kernel and initramfs, when the VM boots a kernel directly
//	initrd
//	memory.ram    the guest's RAM, a file QEMU maps shared (page N at offset N*4096), sparse:
//	              while running it is live memory, while suspended the saved memory; none
//	              while powered off
//	memory.zst    while suspended: QEMU's migration stream of the VM's devices, zstd (a VM
//	              suspended before RAM was in memory.ram has its RAM in here and no memory.ram)
//	state.json    while running: pid, start time, VNC port, accelerator (lets a restarted node
//	              re-attach to VMs that kept running)
//	qmp.sock      QMP monitor socket; serial.log the serial console; qemu.log QEMU's stderr
//	.disk.raw.track  a raw disk's change tracking: a qcow2 of metadata only, whose data file is
//	              disk.raw, holding the dirty bitmap QEMU keeps while the VM runs (track.go)
//
// vm.json, the disk, the kernel files and, while suspended, memory.zst and memory.ram are the
// VM (Driver.Files); the rest is runtime. A running VM's files leave its memory out: migrations
// copy suspended or stopped VMs. Create builds the directory under a temporary name and renames
// it into place, so a failed Create leaves nothing.
//
// The guest's RAM is a file so that a suspended VM's memory travels as a difference: the
// block-diff transfer of a migration sends only the blocks of memory.ram that changed since the
// copy the destination holds (a compressed stream changes almost everywhere when a few pages
// do). QEMU 7.2 has no mapped-ram migration; its x-ignore-shared capability leaves shared RAM
// out of the stream instead. Suspend pauses the vCPUs and migrates the VM, without its RAM, into
// a pipe read by `zstd -1 -T0`; when both QEMU and zstd report success memory.ram is fsynced and
// the output becomes memory.zst; QEMU ends and the all-zero pages of memory.ram become holes.
// Suspend retries when QEMU refuses and in the end leaves the VM running. Resume starts QEMU
// with the same device arguments on the same memory.ram and `-incoming defer`, sets
// x-ignore-shared when the stream's configuration section lists it, loads the stream from
// `zstd -dc` (migrate-incoming fd:) and continues the VM; a stream of the earlier format (RAM
// inside) loads into a new RAM file that becomes memory.ram once the VM runs. Once the guest
// runs, memory.ram is live memory again and memory.zst is removed: the stream no longer
// matches it. (QEMU 7.2 has no file: migration URI; a pipe we own, rather than QEMU's exec:,
// lets the driver wait for the compressor to finish.) A VM that is off has no memory.ram:
// Stop, a guest power-off, a QEMU that died and DiscardState remove it, and Start boots with a
// new, empty one.
//
// Failures leave a VM as it was. A program that is gone (QEMU uninstalled, a wrong path) gives
// ErrNotInstalled, which names the Debian package to install. A missing disk or kernel file gives
// vm.ErrMissingFile before QEMU runs. A saved state that is missing (memory.zst, or the
// memory.ram its stream needs), that zstd finds damaged, whose memory.ram is not a regular file
// of the VM's memory size, or that QEMU cannot load gives vm.ErrStateUnusable and is kept as it
// is (QEMU writes nothing into memory.ram before the guest continues); DiscardState drops it so
// that the VM boots from its disk. A QEMU that dies (killed, crashed) leaves the VM powered off:
// Power reports PowerOff, Suspend and OpenConsole fail with vm.ErrNotRunning, Start boots it.
// Killed during a suspend before the stream was in place, it leaves no memory state; after,
// the state is complete (memory.ram was flushed first). Killed, or its monitor lost, while a
// resume continues the guest, the state is dropped: the guest may have changed memory.ram.
//
// With Accel auto, KVM is used when a real Linux kernel (Config.ProbeKernel: the guests' own, or
// one from /boot) boots under it to its root-mount panic within Config.ProbeTimeout, otherwise
// TCG; the verdict is cached in Dir/accel.json. Without a kernel a boot sector decides, which
// some hosts pass while real guests hang under their KVM. Consoles are VNC
// servers on 127.0.0.1 with a one-time password set through QMP; ports come from a configured
// range and at most MaxConsoles sessions are open at once.
//
// Progress (vm.ProgressReporter) tells whether a running VM's guest shows signs of running:
// serial output since QEMU started, or its vCPU in an operating system (user mode, or the upper
// half of the address space) as QEMU's "info registers" shows it. The vm.Manager turns a long
// absence of both into the VM's Health.
//
// Two guests are built by script and cached outside git for tests and the demo (see Guest):
// the tiny busybox test guest (LoadGuest) and a minimal Debian with systemd and a root shell on
// the VNC and serial consoles (LoadDebian).
package qemu
