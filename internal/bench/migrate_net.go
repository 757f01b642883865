package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
)

// Over an emulated link (links.go) this process stays where it is; in the origin's namespace
// it runs itself again for the link's side (buyer and provider A, rsync and scp clients),
// which runs provider B (`virtuoso node`) and an ssh server in the other namespace.

// runEmulatedLink builds the namespaces of link (the i-th), measures in them and removes them.
func runEmulatedLink(ctx context.Context, opts MigrateOptions, link string, i int) (LinkResult, error) {
	exe := opts.Exec
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return LinkResult{}, err
		}
	}
	l, err := newEmulatedLink(ctx, link, i, opts.Log)
	if err != nil {
		return LinkResult{}, err
	}
	defer l.close()
	work, err := os.MkdirTemp(opts.Dir, "virtuoso-bench-migrate-")
	if err != nil {
		return LinkResult{}, err
	}
	defer os.RemoveAll(work)
	nsO := l.nsO
	side := MigrateSide{Link: link, Shaping: l.shaping, Work: work, LocalIP: l.ipO, PeerIP: l.ipD, PeerNS: l.nsD, Dev: l.devO, Opts: opts}
	side.Opts.Exec = exe
	spec, err := side.marshal()
	if err != nil {
		return LinkResult{}, err
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", nsO, exe, "bench", "migrate-side", spec)
	cmd.Stdout, cmd.Stderr = &out, opts.Progress
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	if err := cmd.Run(); err != nil {
		return LinkResult{}, fmt.Errorf("the side in namespace %s: %w", nsO, err)
	}
	var res LinkResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return LinkResult{}, fmt.Errorf("the side in namespace %s answered %q: %w", nsO, out.String(), err)
	}
	return res, nil
}

// MigrateSideMain runs the side of an emulated link described by spec (from runEmulatedLink,
// in this process's namespace) and writes its result as JSON to out.
func MigrateSideMain(ctx context.Context, spec string, log *slog.Logger, progress io.Writer, out io.Writer) error {
	var side MigrateSide
	if err := json.Unmarshal([]byte(spec), &side); err != nil {
		return fmt.Errorf("bench migrate-side: %w", err)
	}
	side.Opts.Log, side.Opts.Progress = log, progress
	res, err := RunMigrateLink(ctx, side.Opts, side)
	if err != nil {
		return err
	}
	return json.NewEncoder(out).Encode(res)
}

// linkBytes is the bytes received and sent on interface dev of this namespace, or -1.
func linkBytes(dev string) int64 {
	if dev == "" {
		return -1
	}
	b, err := os.ReadFile("/proc/net/dev")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || name != dev {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 9 {
			return -1
		}
		rx, _ := strconv.ParseInt(f[0], 10, 64)
		tx, _ := strconv.ParseInt(f[8], 10, 64)
		return rx + tx
	}
	return -1
}

// startProviderProcess starts provider B as `virtuoso node` in namespace side.PeerNS,
// listening on side.PeerIP, with its home in dir, and adds a machine to it.
func startProviderProcess(ctx context.Context, side MigrateSide, dir string, guest qemu.Guest, images []market.Image, log *slog.Logger) (*benchProvider, error) {
	home := node.Home{Dir: dir}
	cfg := migrateNodeConfig(side.PeerIP, 4001)
	cfg.Roles.Provider, cfg.Provider.Accel, cfg.Provider.ImageDirs = true, side.Opts.Accel, []string{guest.Dir}
	if err := home.Init(cfg, false); err != nil {
		return nil, err
	}
	// The node reads the images it offers from its home's images/ directory.
	if err := os.MkdirAll(home.Path("images"), 0o700); err != nil {
		return nil, err
	}
	for _, img := range images {
		b, err := json.Marshal(img)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(home.Path("images", img.Name+".json"), b, 0o600); err != nil {
			return nil, err
		}
	}
	priv, err := home.Identity()
	if err != nil {
		return nil, err
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(side.Work, "provider-b.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", "netns", "exec", side.PeerNS, side.Opts.Exec, "node", "--home", dir, "--log-level", "warn")
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	done := make(chan struct{})
	p := &benchProvider{id: id, home: dir, addrs: []string{fmt.Sprintf("/ip4/%s/tcp/4001/p2p/%s", side.PeerIP, id)}}
	p.stop = func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		return logf.Close()
	}
	up := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		ok := false
		for sc.Scan() {
			if !ok && strings.Contains(sc.Text(), " running; API on ") {
				ok = true
				up <- true
			}
		}
		if !ok {
			up <- false
		}
		_ = cmd.Wait()
		close(done)
	}()
	select {
	case ok := <-up:
		if !ok {
			p.stop()
			b, _ := os.ReadFile(logf.Name())
			return nil, fmt.Errorf("the node exited at start: %s", bytes.TrimSpace(b))
		}
	case <-time.After(90 * time.Second):
		p.stop()
		return nil, errors.New("the node did not start within 90s")
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
	return p, nil
}

var addedMachine = regexp.MustCompile(`added machine (\S+)`)

// addMachine has provider p sell demo machine i.
func (p *benchProvider) addMachine(ctx context.Context, side MigrateSide, i int) error {
	if p.node != nil {
		m, err := p.node.Provider.AddMachine(ctx, market.DemoMachine(i))
		p.machine = m.ID
		return err
	}
	spec := market.DemoMachine(i)
	t := spec.Terms
	args := []string{"netns", "exec", side.PeerNS, side.Opts.Exec, "machine", "add", "--home", p.home, "--name", spec.Name,
		"--speed", fmt.Sprint(spec.Capacity.SpeedBogomips), "--memory", fmt.Sprint(spec.Capacity.MemoryMB),
		"--storage", fmt.Sprint(spec.Capacity.StorageMB), "--network", fmt.Sprint(spec.NetworkMbps),
		"--running-period", fmt.Sprintf("%ds", t.RunningSecs), "--storage-period", fmt.Sprintf("%ds", t.StorageSecs)}
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("virtuoso machine add: %w: %s", err, bytes.TrimSpace(out))
	}
	g := addedMachine.FindSubmatch(out)
	if g == nil {
		return fmt.Errorf("virtuoso machine add answered %q", out)
	}
	p.machine, err = market.ParseMachineID(string(g[1]))
	return err
}

// baselineTools runs rsync and scp over ssh to a private sshd on the peer's side.
type baselineTools struct {
	side    MigrateSide
	dir     string // keys, config
	ssh     []string
	port    int
	sshd    *exec.Cmd
	done    chan struct{}
	version string
}

type baselineTool struct {
	label string
	rsync bool
}

// startBaselines starts an ssh server on side.PeerIP (in side.PeerNS, if any) that lets in
// this benchmark's own key only, installing openssh-server and rsync first if they are
// missing and this process may (root, apt-get).
func startBaselines(ctx context.Context, side MigrateSide, log *slog.Logger) (*baselineTools, error) {
	for _, t := range [][2]string{{"rsync", "rsync"}, {"ssh", "openssh-client"}, {"/usr/sbin/sshd", "openssh-server"}} {
		if err := ensureTool(ctx, t[0], t[1], log); err != nil {
			return nil, err
		}
	}
	dir := filepath.Join(side.Work, "ssh")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for _, k := range []string{"host", "id"} {
		if out, err := exec.CommandContext(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ssh-keygen: %w: %s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "id.pub"))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		return nil, err
	}
	port := 2222
	if side.PeerNS == "" {
		l, err := net.Listen("tcp", net.JoinHostPort(side.PeerIP, "0"))
		if err != nil {
			return nil, err
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	conf := fmt.Sprintf("Port %d\nListenAddress %s\nHostKey %s\nPidFile %s\nAuthorizedKeysFile %s\n"+
		"PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"+
		"UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n",
		port, side.PeerIP, filepath.Join(dir, "host"), filepath.Join(dir, "sshd.pid"), filepath.Join(dir, "authorized_keys"))
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(conf), 0o600); err != nil {
		return nil, err
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // sshd's privilege separation directory
		return nil, err
	}
	args := []string{"/usr/sbin/sshd", "-D", "-e", "-f", filepath.Join(dir, "sshd_config")}
	if side.PeerNS != "" {
		args = append([]string{"ip", "netns", "exec", side.PeerNS}, args...)
	}
	t := &baselineTools{side: side, dir: dir, port: port, done: make(chan struct{})}
	t.ssh = []string{"ssh", "-F", "/dev/null", "-i", filepath.Join(dir, "id"), "-p", strconv.Itoa(port),
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"}
	logf, err := os.Create(filepath.Join(dir, "sshd.log"))
	if err != nil {
		return nil, err
	}
	t.sshd = exec.Command(args[0], args[1:]...)
	t.sshd.Stdout, t.sshd.Stderr = logf, logf
	t.sshd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := t.sshd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	go func() { _ = t.sshd.Wait(); logf.Close(); close(t.done) }()
	for deadline := time.Now().Add(10 * time.Second); ; {
		out, err := exec.CommandContext(ctx, t.ssh[0], append(t.ssh[1:], "root@"+side.PeerIP, "true")...).CombinedOutput()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.stop()
			b, _ := os.ReadFile(filepath.Join(dir, "sshd.log"))
			return nil, fmt.Errorf("ssh to the private sshd: %w: %s %s", err, bytes.TrimSpace(out), bytes.TrimSpace(b))
		}
		time.Sleep(100 * time.Millisecond)
	}
	v, _ := exec.CommandContext(ctx, "rsync", "--version").Output()
	if f := strings.Fields(string(v)); len(f) >= 3 && f[1] == "version" {
		t.version = f[2]
	}
	for _, d := range []string{"rsync", "scp"} {
		if err := os.MkdirAll(filepath.Join(side.Work, "dst-"+d), 0o755); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (t *baselineTools) stop() {
	_ = t.sshd.Process.Kill()
	<-t.done
}

// methods are the baselines run after a migration of the same move: rsync after each, scp
// for the first copy and once again (it always copies everything).
func (t *baselineTools) methods(move string) []baselineTool {
	rs := baselineTool{label: "rsync", rsync: true}
	if move == moveAfterRun {
		return []baselineTool{rs}
	}
	return []baselineTool{rs, {label: "scp"}}
}

// run copies the files names of dir to the ssh server's side with tool b and times it.
func (t *baselineTools) run(ctx context.Context, b baselineTool, move, dir string, names []string) (MigrateRow, error) {
	row := MigrateRow{Method: b.label, Move: move, Wire: -1, Link: -1}
	if move == moveUnchanged && !b.rsync {
		row.Move = "again"
	}
	src := make([]string, len(names))
	for i, n := range names {
		src[i] = filepath.Join(dir, n)
	}
	var cmd *exec.Cmd
	if b.rsync {
		dst := fmt.Sprintf("root@%s:%s/", t.side.PeerIP, filepath.Join(t.side.Work, "dst-rsync"))
		args := append(append([]string{"-a", "--inplace", "--no-whole-file", "--stats", "-e", strings.Join(t.ssh, " ")}, src...), dst)
		cmd = exec.CommandContext(ctx, "rsync", args...)
	} else {
		dst := fmt.Sprintf("root@%s:%s/", t.side.PeerIP, filepath.Join(t.side.Work, "dst-scp"))
		args := append(append([]string{"-q", "-F", "/dev/null", "-i", filepath.Join(t.dir, "id"), "-P", strconv.Itoa(t.port),
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"}, src...), dst)
		cmd = exec.CommandContext(ctx, "scp", args...)
	}
	link0 := linkBytes(t.side.Dev)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	row.Total = time.Since(start)
	if err != nil {
		return row, fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, bytes.TrimSpace(out))
	}
	if link0 >= 0 {
		row.Link = linkBytes(t.side.Dev) - link0
	}
	if b.rsync {
		row.Wire = 0
		for _, g := range rsyncStatLine.FindAllStringSubmatch(string(out), -1) {
			n, _ := strconv.ParseInt(strings.NewReplacer(",", "", ".", "").Replace(g[2]), 10, 64)
			row.Wire += n
		}
		row.Note = "rsync " + t.version + " -a --inplace --no-whole-file over ssh"
	} else {
		row.Note = "scp over ssh"
	}
	return row, nil
}

// ensureTool finds bin, installing Debian package pkg first if it is missing and this
// process may (root, apt-get).
func ensureTool(ctx context.Context, bin, pkg string, log *slog.Logger) error {
	if _, err := exec.LookPath(bin); err == nil {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s is not installed (install it, e.g. apt-get install -y %s)", bin, pkg)
	}
	log.Info("bench migrate: installing " + pkg)
	install := func() ([]byte, error) {
		cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", pkg)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	if out, err := install(); err != nil {
		_ = exec.CommandContext(ctx, "apt-get", "update").Run()
		if out2, err := install(); err != nil {
			return fmt.Errorf("install %s: %w: %s%s", pkg, err, out, out2)
		}
	}
	if _, err := exec.LookPath(bin); err != nil {
		return fmt.Errorf("%s: %w", bin, err)
	}
	return nil
}
