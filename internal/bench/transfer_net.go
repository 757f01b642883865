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
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// Over an emulated link (links.go) `bench transfer` runs itself again in the origin's
// namespace (`bench transfer-side`: the image, the source node, the rsync and ssh clients),
// which starts in the destination's namespace the receiving node (`bench transfer-dest`), the
// rsync daemon and the ssh server. The receiving node takes its orders as JSON lines on its
// standard input and answers on its standard output; its CPU time is read from /proc.

// TransferSide is one link's half that runs in this process.
type TransferSide struct {
	Link    string          `json:"link"`
	Shaping string          `json:"shaping,omitempty"`
	LocalIP string          `json:"local_ip"` // where the source node listens
	PeerIP  string          `json:"peer_ip"`  // where the destination, the rsync daemon and sshd listen
	PeerNS  string          `json:"peer_ns,omitempty"`
	Dev     string          `json:"dev,omitempty"` // the link's interface in this namespace
	Exec    string          `json:"exec,omitempty"`
	Opts    TransferOptions `json:"opts"`
}

func (s TransferSide) migrateSide(work string) MigrateSide {
	return MigrateSide{Link: s.Link, Work: work, LocalIP: s.LocalIP, PeerIP: s.PeerIP, PeerNS: s.PeerNS, Dev: s.Dev}
}

// runTransferEmulated builds the namespaces of link (the i-th), runs the side in them and
// removes them; the side prints the link's table to out.
func runTransferEmulated(ctx context.Context, opts TransferOptions, link string, i int, out io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	l, err := newEmulatedLink(ctx, link, i, opts.Log)
	if err != nil {
		return err
	}
	defer l.close()
	side := TransferSide{Link: link, Shaping: l.shaping, LocalIP: l.ipO, PeerIP: l.ipD, PeerNS: l.nsD, Dev: l.devO, Exec: exe, Opts: opts}
	spec, err := json.Marshal(side)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.nsO, exe, "bench", "transfer-side", "--log-level", levelName(opts.Log), string(spec))
	var stderr tailBuffer
	cmd.Stdout, cmd.Stderr = out, &stderr
	if opts.Progress != nil {
		cmd.Stderr = io.MultiWriter(opts.Progress, &stderr)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	err = cmd.Run()
	if n := l.delay.dropped(); n > 0 {
		fmt.Fprintf(out, "The delay line dropped %d packets (its queue was full): TCP recovered them, and the times above include that.\n", n)
	}
	if err != nil {
		return fmt.Errorf("the side in namespace %s: %w: %s", l.nsO, err, bytes.TrimSpace(stderr.b))
	}
	return nil
}

// tailBuffer keeps the last 4 KiB written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 4<<10 {
		t.b = t.b[len(t.b)-4<<10:]
	}
	return len(p), nil
}

// levelName is the lowest level log logs, as the CLI's --log-level takes it.
func levelName(log *slog.Logger) string {
	for _, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn} {
		if log != nil && log.Enabled(context.Background(), l) {
			return map[slog.Level]string{slog.LevelDebug: "debug", slog.LevelInfo: "info", slog.LevelWarn: "warn"}[l]
		}
	}
	return "error"
}

// TransferSideMain runs the side of an emulated link described by spec (from
// runTransferEmulated, in this process's namespace) and prints its table to out.
func TransferSideMain(ctx context.Context, spec string, log *slog.Logger, progress io.Writer, out io.Writer) error {
	var side TransferSide
	if err := json.Unmarshal([]byte(spec), &side); err != nil {
		return fmt.Errorf("bench transfer-side: %w", err)
	}
	side.Opts.Log, side.Opts.Progress = log, progress
	return runTransfer(ctx, side.Opts, side, out)
}

// transferDst is the node that receives: in this process, or in the peer's namespace.
type transferDst interface {
	id() peer.ID
	connect(ctx context.Context, src host.Host) error
	fetch(ctx context.Context, from peer.ID, m transferMethod, bs int, dir string,
		show func(done, total int64, rate float64, eta time.Duration)) (transferTiming, error)
	pids() []int // the processes whose CPU time is the receiving end's
	close()
}

// localDst is a node in this process.
type localDst struct{ n *daemon.Node }

func newLocalDst(ctx context.Context, dir string, log *slog.Logger) (*localDst, error) {
	n, err := startBenchNode(ctx, dir, nil, log, false, daemon.Options{})
	if err != nil {
		return nil, err
	}
	serveSink(n.Host())
	return &localDst{n: n}, nil
}

func (d *localDst) id() peer.ID { return d.n.Host().ID() }
func (d *localDst) connect(ctx context.Context, src host.Host) error {
	return d.n.Host().Connect(ctx, peer.AddrInfo{ID: src.ID(), Addrs: src.Addrs()})
}
func (d *localDst) fetch(ctx context.Context, from peer.ID, m transferMethod, bs int, dir string,
	show func(done, total int64, rate float64, eta time.Duration)) (transferTiming, error) {
	return fetchOnce(ctx, d.n.Host(), from, m.tm, !m.noZstd, bs, dir, show)
}
func (d *localDst) pids() []int { return nil }
func (d *localDst) close()      { d.n.Close() }

// serveSink has h discard what the raw-stream row sends it, and say when it has all.
func serveSink(h host.Host) {
	h.SetStreamHandler(transferSinkProto, func(s network.Stream) {
		defer s.Close()
		if _, err := io.Copy(io.Discard, s); err == nil {
			_, _ = s.Write([]byte{1})
		}
	})
}

// dstOrder is what the side asks of the receiving node in the peer's namespace.
type dstOrder struct {
	Op        string          `json:"op"` // connect, fetch
	Peer      *peer.AddrInfo  `json:"peer,omitempty"`
	Method    transfer.Method `json:"method,omitempty"`
	Compress  bool            `json:"compress,omitempty"`
	BlockSize int             `json:"block_size,omitempty"`
	Dir       string          `json:"dir,omitempty"`
}

// dstAnswer is one line of its answer: progress lines, then one with Done set.
type dstAnswer struct {
	Done     bool          `json:"done,omitempty"`
	Error    string        `json:"error,omitempty"`
	Time     time.Duration `json:"time,omitempty"`
	Wire     int64         `json:"wire,omitempty"`
	Note     string        `json:"note,omitempty"`
	Progress *[4]float64   `json:"progress,omitempty"` // done, total, rate, eta (s)
}

// remoteDst is `virtuoso bench transfer-dest` in the peer's namespace.
type remoteDst struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	peer peer.ID
	log  string // its standard error
	mu   sync.Mutex
	done chan struct{}
}

// dstSpec tells `bench transfer-dest` where to keep its home and where to listen.
type dstSpec struct {
	Dir string `json:"dir"`
	IP  string `json:"ip"`
}

func startRemoteDst(ctx context.Context, side TransferSide, dir string, log *slog.Logger) (*remoteDst, error) {
	spec, err := json.Marshal(dstSpec{Dir: dir, IP: side.PeerIP})
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(filepath.Dir(dir), "transfer-dest.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", "netns", "exec", side.PeerNS, side.Exec, "bench", "transfer-dest", "--log-level", levelName(log), string(spec))
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start the receiving node: %w", err)
	}
	d := &remoteDst{cmd: cmd, in: in, out: bufio.NewScanner(out), log: logf.Name(), done: make(chan struct{})}
	d.out.Buffer(make([]byte, 64<<10), 1<<20)
	first := make(chan error, 1)
	go func() {
		var a struct {
			ID peer.ID `json:"id"`
		}
		if !d.out.Scan() {
			first <- errors.New("the receiving node exited at start")
			return
		}
		err := json.Unmarshal(d.out.Bytes(), &a)
		d.peer = a.ID // before the send that orders it before every read
		first <- err
	}()
	go func() { _ = cmd.Wait(); logf.Close(); close(d.done) }()
	fail := func(err error) (*remoteDst, error) {
		d.close()
		b, _ := os.ReadFile(logf.Name())
		return nil, fmt.Errorf("%w: %s", err, bytes.TrimSpace(b))
	}
	select {
	case err := <-first:
		if err != nil {
			return fail(err)
		}
	case <-time.After(60 * time.Second):
		return fail(errors.New("the receiving node did not start within 60s"))
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	return d, nil
}

func (d *remoteDst) id() peer.ID { return d.peer }
func (d *remoteDst) pids() []int { return []int{d.cmd.Process.Pid} }

// ask sends o and reads the answer's lines until the last, passing progress to show.
func (d *remoteDst) ask(ctx context.Context, o dstOrder, show func(done, total int64, rate float64, eta time.Duration)) (dstAnswer, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	// A cancelled order ends the node, which ends its answer.
	stop := context.AfterFunc(ctx, func() { _ = d.cmd.Process.Kill() })
	defer stop()
	b, err := json.Marshal(o)
	if err != nil {
		return dstAnswer{}, err
	}
	if _, err := d.in.Write(append(b, '\n')); err != nil {
		return dstAnswer{}, fmt.Errorf("the receiving node: %w", err)
	}
	for d.out.Scan() {
		var a dstAnswer
		if err := json.Unmarshal(d.out.Bytes(), &a); err != nil {
			return dstAnswer{}, fmt.Errorf("the receiving node answered %q: %w", d.out.Text(), err)
		}
		if p := a.Progress; p != nil && show != nil {
			show(int64(p[0]), int64(p[1]), p[2], time.Duration(p[3]*float64(time.Second)))
		}
		if !a.Done {
			continue
		}
		if a.Error != "" {
			return a, errors.New(a.Error)
		}
		return a, nil
	}
	if ctx.Err() != nil {
		return dstAnswer{}, ctx.Err()
	}
	select {
	case <-d.done:
	case <-time.After(10 * time.Second): // its output closed, but it runs on
		_ = d.cmd.Process.Kill()
		<-d.done
	}
	logText, _ := os.ReadFile(d.log)
	return dstAnswer{}, fmt.Errorf("the receiving node exited (%v): %s", d.cmd.ProcessState, tail(string(bytes.TrimSpace(logText)), 2000))
}

func (d *remoteDst) connect(ctx context.Context, src host.Host) error {
	_, err := d.ask(ctx, dstOrder{Op: "connect", Peer: &peer.AddrInfo{ID: src.ID(), Addrs: src.Addrs()}}, nil)
	return err
}

func (d *remoteDst) fetch(ctx context.Context, from peer.ID, m transferMethod, bs int, dir string,
	show func(done, total int64, rate float64, eta time.Duration)) (transferTiming, error) {
	a, err := d.ask(ctx, dstOrder{Op: "fetch", Method: m.tm, Compress: !m.noZstd, BlockSize: bs, Dir: dir}, show)
	if err != nil {
		return transferTiming{}, err
	}
	return transferTiming{d: a.Time, wire: a.Wire, note: a.Note, ok: true}, nil
}

func (d *remoteDst) close() {
	_ = d.in.Close() // it ends when its orders do
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

// TransferDestMain is `virtuoso bench transfer-dest`: the receiving node of an emulated link,
// in this process's namespace, which fetches what the side orders on in and answers on out.
func TransferDestMain(ctx context.Context, spec string, log *slog.Logger, in io.Reader, out io.Writer) error {
	var s dstSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		return fmt.Errorf("bench transfer-dest: %w", err)
	}
	cfg := migrateNodeConfig(s.IP, 4001)
	n, err := runBenchNode(ctx, node.Home{Dir: s.Dir}, cfg, log, daemon.Options{})
	if err != nil {
		return fmt.Errorf("bench transfer-dest: %w", err)
	}
	defer n.Close()
	h := n.Host()
	serveSink(h)
	var mu sync.Mutex // the progress and the answers share out
	enc := json.NewEncoder(out)
	send := func(v any) error {
		mu.Lock()
		defer mu.Unlock()
		return enc.Encode(v)
	}
	if err := send(map[string]any{"id": h.ID()}); err != nil {
		return err
	}
	var src peer.ID
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var o dstOrder
		a := dstAnswer{Done: true}
		if err := json.Unmarshal(sc.Bytes(), &o); err != nil {
			a.Error = err.Error()
			_ = send(a)
			continue
		}
		switch o.Op {
		case "connect":
			if o.Peer == nil {
				a.Error = "connect: no peer"
				break
			}
			info := peer.AddrInfo{ID: o.Peer.ID}
			for _, ma := range o.Peer.Addrs {
				if _, err := ma.ValueForProtocol(multiaddr.P_IP4); err == nil { // the link is IPv4
					info.Addrs = append(info.Addrs, ma)
				}
			}
			if len(info.Addrs) == 0 {
				a.Error = "connect: the source has no IPv4 address"
			} else {
				if err := h.Connect(ctx, info); err != nil {
					a.Error = err.Error()
				} else {
					src = o.Peer.ID
				}
			}
		case "fetch":
			t, err := fetchOnce(ctx, h, src, o.Method, o.Compress, o.BlockSize, o.Dir,
				func(done, total int64, rate float64, eta time.Duration) {
					_ = send(dstAnswer{Progress: &[4]float64{float64(done), float64(total), rate, eta.Seconds()}})
				})
			if err != nil {
				a.Error = err.Error()
			}
			a.Time, a.Wire, a.Note = t.d, t.wire, t.note
		default:
			a.Error = fmt.Sprintf("unknown order %q", o.Op)
		}
		if err := send(a); err != nil {
			return err
		}
	}
	return sc.Err()
}
