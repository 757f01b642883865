package bench

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// TestMigrateTiny runs the migration benchmark at its smallest, over loopback only (the
// emulated links need root and namespaces; `virtuoso bench migrate` runs them), so it keeps
// working: a real VM (its disk half full of files in ext4) moved three times between two
// providers, rsync and scp beside it.
func TestMigrateTiny(t *testing.T) {
	guest := qemutest.BuildGuest(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var prog bytes.Buffer
	opts := MigrateOptions{Dir: t.TempDir(), Disk: 64 << 20, Memory: 128 << 20, Run: 2 * time.Second, Fill: 0.5, FillWith: "files",
		Links: []string{"loopback"}, Guest: guest.Dir, Progress: &prog}
	if err := opts.defaults(); err != nil {
		t.Fatal(err)
	}
	res, err := RunMigrateLink(ctx, opts, loopbackSide(opts))
	t.Log("progress:\n" + prog.String())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res.Print(&out, opts)
	t.Log("\n" + out.String())

	if res.Accel != "kvm" && res.Accel != "tcg" {
		t.Errorf("accelerator %q", res.Accel)
	}
	if len(res.Notes) > 0 {
		t.Errorf("notes: %q", res.Notes)
	}
	rows := map[string]MigrateRow{}
	for _, r := range res.Rows {
		rows[r.Method+" "+r.Move] = r
	}
	for _, want := range []string{"virtuoso cold", "virtuoso after run", "virtuoso unchanged", "rsync cold", "rsync after run",
		"rsync unchanged", "scp cold", "scp again"} {
		r, ok := rows[want]
		if !ok {
			t.Errorf("no row %q", want)
			continue
		}
		if r.Total <= 0 || len(r.Files) == 0 {
			t.Errorf("%s: %+v", want, r)
		}
	}
	for _, mv := range []string{moveCold, moveAfterRun, moveUnchanged} {
		r := rows["virtuoso "+mv]
		var steps []string
		for _, s := range r.Steps {
			steps = append(steps, s.Step)
		}
		if got := strings.Join(steps, ","); got != strings.Join([]string{market.StepLease, market.StepBegin, market.StepCopy,
			market.StepFinish, market.StepCommit}, ",") {
			t.Errorf("%s: steps %s", mv, got)
		}
		if r.Wire <= 0 {
			t.Errorf("%s: %d bytes on the wire", mv, r.Wire)
		}
		disk := r.Files[0]
		if !strings.HasPrefix(disk.Name, "disk.") || disk.Size != opts.Disk {
			t.Errorf("%s: first file %+v, want the %d-byte disk", mv, disk, opts.Disk)
		}
	}
	// What had to move: everything at first (the filled half of the disk and more), the memory
	// after the guest ran, nothing when unchanged; the wire follows.
	cold, after, same := rows["virtuoso cold"], rows["virtuoso after run"], rows["virtuoso unchanged"]
	if cold.Files[0].Changed < opts.Disk/2-(40<<20) || cold.Wire < cold.Files[0].Changed {
		t.Errorf("cold: disk %+v, %d bytes on the wire", cold.Files[0], cold.Wire)
	}
	mem := false
	for _, f := range after.Files {
		mem = mem || f.Name == "memory.zst" && f.Changed > 0
	}
	if !mem {
		t.Errorf("after run: the memory did not change: %+v", after.Files)
	}
	for _, f := range same.Files {
		if f.Changed != 0 {
			t.Errorf("unchanged: %s differs by %d bytes from the destination's copy", f.Name, f.Changed)
		}
	}
	if same.Wire >= after.Wire || after.Wire >= cold.Wire {
		t.Errorf("bytes on the wire: cold %d, after run %d, unchanged %d", cold.Wire, after.Wire, same.Wire)
	}
	for _, want := range []string{"link loopback", "virtuoso", "rsync", "scp", "goal", "memory.zst"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
}
