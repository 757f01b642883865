// Package qemu is the vm.Driver for QEMU: real qemu-system-x86_64 processes controlled over QMP,
// disks made with qemu-img, consoles over VNC.
//
// Each VM lives in its own directory, Dir/vms/<id>:
//
//	vm.json       the definition: the vm.Config it was created from and the file names below
//	disk.raw      the disk (or disk.qcow2), sparse
//	vmlinuz       kernel and initramfs, when the VM boots a kernel directly
//	initrd
//	memory.zst    while suspended: QEMU's migration stream of the VM's memory and devices, zstd
//	state.json    while running: pid, start time, VNC port, accelerator (lets a restarted node
//	              re-attach to VMs that kept running)
//	qmp.sock      QMP monitor socket; serial.log the serial console; qemu.log QEMU's stderr
//
// vm.json, the disk, the kernel files and memory.zst are the VM (Driver.Files); the rest is
// runtime. Create builds the directory under a temporary name and renames it into place, so a
// failed Create leaves nothing.
//
// Suspend pauses the vCPUs and migrates the VM into a pipe read by `zstd -1 -T0`, whose output
// becomes memory.zst only when both QEMU and zstd report success; it retries when QEMU refuses
// and in the end leaves the VM running. Resume starts QEMU with the same device arguments and
// `-incoming fd:` fed by `zstd -dc`, then continues it. (QEMU 7.2 has no file: migration URI; a
// pipe we own, rather than QEMU's exec:, lets the driver wait for the compressor to finish.)
//
// Failures leave a VM as it was. A program that is gone (QEMU uninstalled, a wrong path) gives
// ErrNotInstalled, which names the Debian package to install. A missing disk or kernel file gives
// vm.ErrMissingFile before QEMU runs. A saved state that is missing, that zstd finds damaged or
// that QEMU cannot load gives vm.ErrStateUnusable and is kept as it is; DiscardState drops it so
// that the VM boots from its disk. A QEMU that dies (killed, crashed) leaves the VM powered off:
// Power reports PowerOff, Suspend and OpenConsole fail with vm.ErrNotRunning, Start boots it.
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
