package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// An emulated link is two network namespaces of the benchmark joined point to point, with
// addresses of 10.210.<i>.0/30 that exist only inside them, each end shaped to the link's
// rate with tbf. Without added delay the two ends are a veth pair. With one ("100mbit+20ms",
// a round trip), each end is a TUN device and this process carries every IP packet between
// them after half the delay, in order: the kernel here has no netem, and a delay added per
// packet is what TCP's round trips, windows and slow start see on a real link (a relay of
// bytes would hide them).

// nsPrefix names the benchmark's namespaces: vbench-<pid>-<link>-o and -d.
const nsPrefix = "vbench-"

var nsName = regexp.MustCompile(`^vbench-([0-9]+)-[0-9]+-[od]$`)

// linkRE matches a link's name: a rate, and optionally a round-trip delay.
var linkRE = regexp.MustCompile(`^([1-9][0-9]{0,5})(mbit|gbit)(?:\+([1-9][0-9]{0,3})ms)?$`)

// checkLinks refuses link names other than loopback and linkRE's.
func checkLinks(links []string) error {
	for _, l := range links {
		if l != "loopback" && !linkRE.MatchString(l) {
			return fmt.Errorf("link %q: want loopback, or a rate such as 100mbit or 1gbit, with an optional round-trip delay such as 100mbit+20ms", l)
		}
	}
	return nil
}

// emulatedLink is a link's two namespaces: the origin's (o) and the destination's (d).
type emulatedLink struct {
	name     string
	nsO, nsD string
	devO     string // the link's interface in the origin's namespace
	ipO, ipD string
	shaping  string // what the link is, for the tables
	log      *slog.Logger
	delay    *delayLine
}

// newEmulatedLink builds the namespaces of link, the i-th of this process. close removes them.
func newEmulatedLink(ctx context.Context, link string, i int, log *slog.Logger) (*emulatedLink, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("emulated links need root (ip netns, tc): run as root, or over loopback")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("emulated links need %s (Debian package iproute2): %w", tool, err)
		}
	}
	g := linkRE.FindStringSubmatch(link)
	if g == nil {
		return nil, checkLinks([]string{link})
	}
	removeStaleNamespaces(ctx, log)
	n, _ := strconv.ParseInt(g[1], 10, 64)
	bps := n * 1_000_000
	if g[2] == "gbit" {
		bps *= 1000
	}
	rtt := time.Duration(0)
	if g[3] != "" {
		ms, _ := strconv.Atoi(g[3])
		rtt = time.Duration(ms) * time.Millisecond
	}
	tag := fmt.Sprintf("%d-%d", os.Getpid(), i)
	l := &emulatedLink{
		name: link, log: log,
		nsO: nsPrefix + tag + "-o", nsD: nsPrefix + tag + "-d",
		devO: fmt.Sprintf("vb%do%d", os.Getpid(), i),
		ipO:  fmt.Sprintf("10.210.%d.1", i%256), ipD: fmt.Sprintf("10.210.%d.2", i%256),
	}
	devD := fmt.Sprintf("vb%dd%d", os.Getpid(), i)
	burst := max(64<<10, bps/8/250) // 4 ms of the rate, and at least one GSO segment
	rate := g[1] + g[2]
	steps := [][]string{
		{"ip", "netns", "add", l.nsO},
		{"ip", "netns", "add", l.nsD},
	}
	if rtt == 0 {
		l.shaping = fmt.Sprintf("veth between two namespaces, tbf rate %s burst %d latency 50ms on both ends, no added delay", rate, burst)
		steps = append(steps,
			[]string{"ip", "link", "add", l.devO, "type", "veth", "peer", "name", devD},
			[]string{"ip", "link", "set", l.devO, "netns", l.nsO},
			[]string{"ip", "link", "set", devD, "netns", l.nsD},
			[]string{"ip", "-n", l.nsO, "addr", "add", l.ipO + "/30", "dev", l.devO},
			[]string{"ip", "-n", l.nsD, "addr", "add", l.ipD + "/30", "dev", devD})
	} else {
		l.shaping = fmt.Sprintf("TUN devices in two namespaces, tbf rate %s burst %d latency 50ms on both ends, %v added to each round trip (%v each way, per packet, in order; "+
			"no segmentation offload, and the receiving kernel's work is charged to neither end)", rate, burst, rtt, rtt/2)
	}
	fail := func(err error) (*emulatedLink, error) {
		l.close()
		_ = exec.Command("ip", "link", "del", l.devO).Run() // if it never left this namespace
		return nil, err
	}
	run := func(steps [][]string) error {
		for _, s := range steps {
			if out, err := exec.CommandContext(ctx, s[0], s[1:]...).CombinedOutput(); err != nil {
				return fmt.Errorf("%s: %w: %s", strings.Join(s, " "), err, bytes.TrimSpace(out))
			}
		}
		return nil
	}
	if err := run(steps); err != nil {
		return fail(err)
	}
	if rtt > 0 {
		tunO, err := openTUN(l.devO)
		if err != nil {
			return fail(err)
		}
		tunD, err := openTUN(devD)
		if err != nil {
			tunO.Close()
			return fail(err)
		}
		l.delay = startDelayLine(tunO, tunD, rtt/2, log)
		if err := run([][]string{
			{"ip", "link", "set", l.devO, "netns", l.nsO, "mtu", strconv.Itoa(tunMTU), "txqueuelen", strconv.Itoa(tunQueue)},
			{"ip", "link", "set", devD, "netns", l.nsD, "mtu", strconv.Itoa(tunMTU), "txqueuelen", strconv.Itoa(tunQueue)},
			{"ip", "-n", l.nsO, "addr", "add", l.ipO, "peer", l.ipD, "dev", l.devO},
			{"ip", "-n", l.nsD, "addr", "add", l.ipD, "peer", l.ipO, "dev", devD},
		}); err != nil {
			return fail(err)
		}
	}
	if err := run([][]string{
		{"ip", "-n", l.nsO, "link", "set", "lo", "up"},
		{"ip", "-n", l.nsD, "link", "set", "lo", "up"},
		{"ip", "-n", l.nsO, "link", "set", l.devO, "up"},
		{"ip", "-n", l.nsD, "link", "set", devD, "up"},
		{"ip", "netns", "exec", l.nsO, "tc", "qdisc", "add", "dev", l.devO, "root", "tbf", "rate", rate, "burst", strconv.FormatInt(burst, 10), "latency", "50ms"},
		{"ip", "netns", "exec", l.nsD, "tc", "qdisc", "add", "dev", devD, "root", "tbf", "rate", rate, "burst", strconv.FormatInt(burst, 10), "latency", "50ms"},
	}); err != nil {
		return fail(err)
	}
	return l, nil
}

// close ends what runs in the namespaces and removes them.
func (l *emulatedLink) close() {
	removeNamespace(l.nsO, l.log)
	removeNamespace(l.nsD, l.log)
	if l.delay != nil {
		l.delay.close()
	}
}

// openTUN makes TUN device name (IP packets, no header) in this process's namespace.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	var req [unix.IFNAMSIZ + 64]byte
	copy(req[:unix.IFNAMSIZ-1], name)
	*(*uint16)(unsafe.Pointer(&req[unix.IFNAMSIZ])) = unix.IFF_TUN | unix.IFF_NO_PI
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); errno != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, errno)
	}
	if err := unix.SetNonblock(fd, true); err != nil { // so that the runtime's poller waits for it
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// delayLine carries packets both ways between two TUN devices, each after a fixed delay.
type delayLine struct {
	a, b  *os.File
	wg    sync.WaitGroup
	drops atomic.Int64
}

// dropped is how many packets found the queue full; 0 for no delay line.
func (d *delayLine) dropped() int64 {
	if d == nil {
		return 0
	}
	return d.drops.Load()
}

// delayQueue bounds the packets in flight in one direction: more than the link's rate
// times the delay for the links the benchmarks emulate (1 Gbit × 500 ms at 1500 bytes).
// tunQueue is the devices' own queue (txqueuelen), deep enough that a pause of this
// process (a collection, the scheduler) does not drop what the kernel queues meanwhile.
const (
	delayQueue = 1 << 16
	tunQueue   = 10000
	tunMTU     = 1500
)

func startDelayLine(a, b *os.File, oneWay time.Duration, log *slog.Logger) *delayLine {
	d := &delayLine{a: a, b: b}
	d.wg.Add(2)
	go d.carry(a, b, oneWay, log)
	go d.carry(b, a, oneWay, log)
	return d
}

type delayedPacket struct {
	due time.Time
	buf *[]byte
	p   []byte // of buf
}

// carry reads packets from in and writes each to out when its delay has passed; a packet
// that finds the queue full is dropped, as a router's full queue drops it.
func (d *delayLine) carry(in, out *os.File, delay time.Duration, log *slog.Logger) {
	defer d.wg.Done()
	q := make(chan delayedPacket, delayQueue)
	pool := sync.Pool{New: func() any { b := make([]byte, tunMTU+64); return &b }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for pk := range q {
			if w := time.Until(pk.due); w > 0 {
				time.Sleep(w)
			}
			if _, err := out.Write(pk.p); err != nil && !errors.Is(err, os.ErrClosed) {
				log.Debug("bench link: write packet", "err", err)
			}
			pool.Put(pk.buf)
		}
	}()
	for {
		buf := pool.Get().(*[]byte)
		n, err := in.Read(*buf)
		if err != nil {
			close(q)
			<-done
			return
		}
		select {
		case q <- delayedPacket{due: time.Now().Add(delay), buf: buf, p: (*buf)[:n]}:
		default:
			d.drops.Add(1)
			pool.Put(buf)
		}
	}
}

// close stops carrying packets and closes both devices.
func (d *delayLine) close() {
	_ = d.a.Close()
	_ = d.b.Close()
	d.wg.Wait()
}

// removeStaleNamespaces removes the namespaces of benchmark runs that are gone.
func removeStaleNamespaces(ctx context.Context, log *slog.Logger) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		g := nsName.FindStringSubmatch(f[0])
		if g == nil {
			continue
		}
		pid, _ := strconv.Atoi(g[1])
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			removeNamespace(f[0], log)
		}
	}
}

// removeNamespace ends the processes in namespace ns (all started by this benchmark: its
// side, provider B, their QEMUs, sshd) and deletes it with its end of the veth.
func removeNamespace(ns string, log *slog.Logger) {
	if !strings.HasPrefix(ns, nsPrefix) {
		return
	}
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	for range 50 {
		out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput()
		if err == nil || bytes.Contains(out, []byte("No such file")) {
			return
		}
		time.Sleep(100 * time.Millisecond)
		if log != nil {
			log.Debug("bench: remove namespace", "ns", ns, "err", err, "out", string(out))
		}
	}
}
