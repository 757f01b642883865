package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// TestVMCommands tries a provider's hypervisor the way its owner does: `virtuoso vm --local …` against
// a running provider node, with a real QEMU guest.
func TestVMCommands(t *testing.T) {
	guest := qemutest.BuildGuest(t)
	home := filepath.Join(t.TempDir(), "provider")
	mustRun(t, "init", "--home", home, "--provider")
	// Let this provider use the test guest's files and force TCG (KVM here is not usable).
	editConfig(t, home, "image_dirs = []", `image_dirs = ["`+guest.Dir+`"]`, `accel = "auto"`, `accel = "tcg"`)
	startNode(t, home)

	out := mustRun(t, "vm", "create", "--home", home, "--name", "try", "--memory", "128", "--disk", "64",
		"--image", guest.Disk, "--kernel", guest.Kernel, "--initrd", guest.Initrd, "--cmdline", guest.Cmdline)
	id, rest, _ := strings.Cut(strings.TrimSpace(out), " ")
	if !strings.HasPrefix(rest, "stored (version 1)") {
		t.Fatalf("vm create printed %q", out)
	}
	t.Cleanup(func() { run(t, "vm", "--local", "stop", "--home", home, id) })

	for _, step := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "--local", "start", id, "--home", home}, "started (version 2)"},
		{[]string{"vm", "--local", "ls", "--home", home}, "stop console suspend"},
		{[]string{"vm", "--local", "console", "--home", home, id}, "VNC 127.0.0.1:"},
		{[]string{"vm", "--local", "suspend", "--home", home, id}, "suspended (version 3)"},
		{[]string{"vm", "--local", "resume", "--home", home, id}, "started (version 4)"},
		{[]string{"vm", "--local", "status", "--home", home, id}, "started (version 4)"},
		{[]string{"vm", "--local", "suspend", "--home", home, id}, "suspended (version 5)"},
	} {
		if out := mustRun(t, step.args...); !strings.Contains(out, step.want) {
			t.Fatalf("virtuoso %s printed %q; want %q", strings.Join(step.args, " "), out, step.want)
		}
	}
	// The saved memory state is lost: resume says so, and how to boot from the disk instead.
	if err := os.Remove(filepath.Join(home, "vms", "vms", id, "memory.zst")); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := run(t, "vm", "--local", "resume", "--home", home, id)
	if want := "`virtuoso vm --local resume --fresh " + id + "` boots the vm from its disk"; code != 1 || !strings.Contains(stderr, want) {
		t.Fatalf("resume without its saved state: exit %d, stderr %q; want the remedy %q", code, stderr, want)
	}
	for _, step := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "--local", "resume", "--fresh", "--home", home, id}, "started (version 6)"},
		{[]string{"vm", "--local", "stop", "--home", home, id}, "stopped (version 7)"},
		{[]string{"vm", "--local", "rm", "--home", home, id}, "deleted (version 8)"},
	} {
		if out := mustRun(t, step.args...); !strings.Contains(out, step.want) {
			t.Fatalf("virtuoso %s printed %q; want %q", strings.Join(step.args, " "), out, step.want)
		}
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no id", []string{"vm", "--local", "start", "--home", home}, 2, "missing id"},
		{"unknown action", []string{"vm", "--local", "explode", "--home", home}, 2, "unknown action"},
		{"deleted vm", []string{"vm", "--local", "start", "--home", home, id}, 1, "not found"},
		{"illegal for status", nil, 1, "cannot resume: the vm is stored (possible now: start, migrate, rm)\n  `virtuoso vm --local ls` shows what each vm can do now"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if args == nil {
				out := mustRun(t, "vm", "create", "--home", home, "--memory", "64", "--disk", "64")
				args = []string{"vm", "--local", "resume", "--home", home, strings.Fields(out)[0]}
			}
			code, _, stderr := run(t, args...)
			if code != tc.code || !strings.Contains(strings.ToLower(stderr), tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") != strings.Count(tc.want, "\n") {
				t.Fatalf("virtuoso %s: exit %d, stderr %q; want exit %d, saying %q", strings.Join(args, " "), code, stderr, tc.code, tc.want)
			}
		})
	}
}
