package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Guest RAM lives in a file of the VM's directory (memory.ram, mapped shared by QEMU) so that
// a suspended VM's memory keeps guest page N at offset N*4096 from one suspend to the next: the
// block-diff transfer then sends only the blocks the guest changed. The migration stream of a
// suspend (memory.zst) carries the device state only: QEMU's x-ignore-shared capability leaves
// shared RAM out of it. QEMU 7.2 has no mapped-ram migration, which would do the same without a
// file-backed RAM.

// ramBackend is the id of the memory backend, and so the name of the RAM block in migration
// streams. It is the name QEMU gives the RAM of plain "-m" (default_ram_id of pc and q35), so
// that streams saved before RAM was file-backed still load.
const ramBackend = "pc.ram"

// machineArgs are the QEMU arguments of the machine type, with the guest's memory backed by
// file ram (relative to the VM's directory), shared so that the guest's writes land in the
// file; with ram empty, by anonymous memory.
func machineArgs(machine string, memoryMB int64, ram string) []string {
	if ram == "" {
		return []string{"-machine", machine}
	}
	size := strconv.FormatInt(memoryMB, 10) + "M"
	return []string{
		"-machine", machine + ",memory-backend=" + ramBackend,
		"-object", "memory-backend-file,id=" + ramBackend + ",size=" + size + ",mem-path=" + ram +
			",share=on,x-use-canonical-path-for-ramblock-id=off",
	}
}

// ignoreSharedCap is the migration capability that leaves shared RAM out of the stream.
var ignoreSharedCap = map[string]any{
	"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
}

// ignoreSharedMark is how a stream saved with x-ignore-shared says so: QEMU lists the
// capabilities source and destination must agree on in the configuration section that follows
// the stream's header, each as a length byte and a name. A stream of the earlier format (RAM
// inside the stream) has none.
var ignoreSharedMark = []byte("\x0fx-ignore-shared")

// stateHeadBytes is how much of a decompressed stream is read to tell its format: the header
// and the configuration section (machine type name, capabilities) fit in it.
const stateHeadBytes = 512

// parseStateHead checks the start of a decompressed migration stream and reports whether its
// RAM is in memory.ram (saved with x-ignore-shared) rather than in the stream.
func parseStateHead(head []byte) (ramInFile bool, err error) {
	if len(head) < len(stateMagic) {
		return false, fmt.Errorf("it holds %d bytes of state once decompressed", len(head))
	}
	if string(head[:len(stateMagic)]) != stateMagic {
		return false, fmt.Errorf("not a qemu saved state: it starts with %q", head[:len(stateMagic)])
	}
	return bytes.Contains(head, ignoreSharedMark), nil
}

// checkRAMFile checks that the RAM file of a suspended VM is there and can be QEMU's RAM: a
// regular file (a link could make the guest's memory another file of this machine) of the
// VM's memory size.
func checkRAMFile(path string, memoryMB int64) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	if want := memoryMB << 20; fi.Size() != want {
		return fmt.Errorf("%d bytes, want %d for %d MB of memory", fi.Size(), want, memoryMB)
	}
	return nil
}

// syncFile makes what QEMU wrote into a file through its shared mapping durable: fsync writes
// back the file's dirty page-cache pages, whichever process dirtied them.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	serr := f.Sync()
	return errors.Join(serr, f.Close())
}

// punchZeroPages turns the all-zero pages of the file at path into holes, so that memory the
// guest zeroed (Linux clears pages it hands out) takes no space on disk. Only the file's data
// extents are read; the content is unchanged. No running guest may have the file mapped.
func punchZeroPages(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fd := int(f.Fd())
	const page = int64(len(zeroPage))
	buf := make([]byte, 1<<20)
	var zeroFrom, zeroTo int64 // the run of zero pages being collected
	punch := func() error {
		if zeroTo == zeroFrom {
			return nil
		}
		err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, zeroFrom, zeroTo-zeroFrom)
		zeroFrom = zeroTo
		return err
	}
	for off := int64(0); ; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return punch() // no data after off
		}
		if err != nil {
			return err
		}
		if off, err = unix.Seek(fd, data, unix.SEEK_HOLE); err != nil {
			return err
		}
		for pos := data &^ (page - 1); pos < off; {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), off-pos)], pos)
			if n == 0 {
				if err == nil || errors.Is(err, io.EOF) {
					break
				}
				return err
			}
			for p := pos; p+page <= pos+int64(n); p += page {
				if !bytes.Equal(buf[p-pos:p-pos+page], zeroPage[:]) {
					continue
				}
				if p != zeroTo {
					if err := punch(); err != nil {
						return err
					}
					zeroFrom = p
				}
				zeroTo = p + page
			}
			pos += int64(n)
		}
	}
}

var zeroPage [4096]byte

// removeIfExists removes the files names in dir, ignoring those already gone, and reports
// whether it removed any.
func removeIfExists(dir string, names ...string) (bool, error) {
	removed := false
	var errs []error
	for _, name := range names {
		err := os.Remove(filepath.Join(dir, name))
		switch {
		case err == nil:
			removed = true
		case !errors.Is(err, fs.ErrNotExist):
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}
