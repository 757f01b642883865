package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
)

// QMP is QEMU's JSON monitor protocol: one JSON object per line. After a greeting and
// qmp_capabilities, each {"execute": ...} is answered by {"return": ...} or {"error": ...};
// asynchronous {"event": ...} objects may arrive in between and are skipped here.

// maxQMPMessage caps one line from QEMU; the largest replies we ask for are a few KiB.
const maxQMPMessage = 1 << 20

// qmpError is an error object of a QMP reply.
type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *qmpError) Error() string { return e.Class + ": " + e.Desc }

type qmpMessage struct {
	Event  string          `json:"event"`
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
	ID     json.RawMessage `json:"id"`
	QMP    json.RawMessage `json:"QMP"`
}

// qmpConn is one QMP session. QEMU serves one client at a time per monitor socket, so the
// driver holds a VM's operation lock while it has a session open.
type qmpConn struct {
	conn *net.UnixConn
	r    *bufio.Reader
	next int
}

// dialQMP connects to the monitor socket sockName in dir, waiting for it to appear until ctx
// ends or alive reports the process gone. The socket is reached through /proc/self/fd so that a
// long directory path cannot overflow sun_path (108 bytes).
func dialQMP(ctx context.Context, dir, sockName string, alive func() bool) (*qmpConn, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open vm dir: %w", err)
	}
	defer d.Close()
	path := filepath.Join(dir, sockName)
	if len(path) > 100 {
		path = fmt.Sprintf("/proc/self/fd/%d/%s", d.Fd(), sockName)
	}
	var dialer net.Dialer
	delay := 5 * time.Millisecond
	for {
		c, err := dialer.DialContext(ctx, "unix", path)
		if err == nil {
			q := &qmpConn{conn: c.(*net.UnixConn), r: bufio.NewReaderSize(c, 64<<10)}
			if err := q.handshake(ctx); err != nil {
				c.Close()
				return nil, err
			}
			return q, nil
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w: connect qmp: %w", vm.ErrHypervisor, err)
		}
		if alive != nil && !alive() {
			return nil, fmt.Errorf("%w: qemu exited before its monitor came up", vm.ErrHypervisor)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect qmp: %w", ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, 200*time.Millisecond)
	}
}

func (q *qmpConn) handshake(ctx context.Context) error {
	q.deadline(ctx)
	msg, err := q.read()
	if err != nil {
		return fmt.Errorf("%w: qmp greeting: %w", vm.ErrHypervisor, err)
	}
	if msg.QMP == nil {
		return fmt.Errorf("%w: qmp greeting missing", vm.ErrHypervisor)
	}
	return q.execute(ctx, "qmp_capabilities", nil, nil)
}

func (q *qmpConn) Close() error { return q.conn.Close() }

func (q *qmpConn) deadline(ctx context.Context) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(30 * time.Second) // QMP commands we use answer in milliseconds
	}
	q.conn.SetDeadline(dl)
}

func (q *qmpConn) read() (qmpMessage, error) { return readQMP(q.r) }

// readQMP returns the next message, enforcing the size cap.
func readQMP(r *bufio.Reader) (qmpMessage, error) {
	var line []byte
	for {
		chunk, isPrefix, err := r.ReadLine()
		if err != nil {
			return qmpMessage{}, err
		}
		line = append(line, chunk...)
		if len(line) > maxQMPMessage {
			return qmpMessage{}, fmt.Errorf("qmp message over %d bytes", maxQMPMessage)
		}
		if !isPrefix {
			break
		}
	}
	var msg qmpMessage
	if err := json.Unmarshal(bytes.TrimSpace(line), &msg); err != nil {
		return qmpMessage{}, fmt.Errorf("qmp message: %w", err)
	}
	return msg, nil
}

// execute runs one command, decoding its return value into out (if not nil).
func (q *qmpConn) execute(ctx context.Context, cmd string, args, out any) error {
	return q.executeFD(ctx, cmd, args, out, -1)
}

// executeFD runs one command, passing file descriptor fd along with it (for getfd) when fd >= 0.
func (q *qmpConn) executeFD(ctx context.Context, cmd string, args, out any, fd int) error {
	q.next++
	id := q.next
	req := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	q.deadline(ctx)
	if fd >= 0 {
		_, _, err = q.conn.WriteMsgUnix(b, syscall.UnixRights(fd), nil)
	} else {
		_, err = q.conn.Write(b)
	}
	if err != nil {
		return fmt.Errorf("%w: qmp %s: %w", vm.ErrHypervisor, cmd, err)
	}
	for {
		msg, err := q.read()
		if err != nil {
			return fmt.Errorf("%w: qmp %s: %w", vm.ErrHypervisor, cmd, err)
		}
		if msg.Event != "" || msg.QMP != nil {
			continue
		}
		if string(msg.ID) != fmt.Sprint(id) {
			continue // a reply to a command of an earlier, abandoned exchange
		}
		if msg.Error != nil {
			return fmt.Errorf("%w: qmp %s: %w", vm.ErrHypervisor, cmd, msg.Error)
		}
		if out != nil && len(msg.Return) > 0 {
			if err := json.Unmarshal(msg.Return, out); err != nil {
				return fmt.Errorf("%w: qmp %s reply: %w", vm.ErrHypervisor, cmd, err)
			}
		}
		return nil
	}
}

// runStatus asks QEMU for its run state ("running", "paused", "inmigrate", "postmigrate"...).
func (q *qmpConn) runStatus(ctx context.Context) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	if err := q.execute(ctx, "query-status", nil, &st); err != nil {
		return "", err
	}
	return st.Status, nil
}

// migrationInfo is the part of query-migrate's reply we use.
type migrationInfo struct {
	Status string `json:"status"` // none, setup, active, completed, failed, cancelled...
	Error  string `json:"error-desc"`
	RAM    struct {
		Total       int64 `json:"total"`
		Transferred int64 `json:"transferred"`
	} `json:"ram"`
}

func (q *qmpConn) queryMigrate(ctx context.Context) (migrationInfo, error) {
	var mi migrationInfo
	err := q.execute(ctx, "query-migrate", nil, &mi)
	return mi, err
}
