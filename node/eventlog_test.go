package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/nodetest"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/node"
)

// happened is an event of the tests that belongs in the log.
type happened struct{ kind, vm, msg string }

func (h happened) LogRecord() node.EventRecord {
	return node.EventRecord{Kind: h.kind, VM: h.vm, Message: h.msg, Data: node.RecordData(map[string]string{"msg": h.msg})}
}

// startLogged starts a node on home with an event log; both are closed at the end of the test.
func startLogged(t *testing.T, home node.Home, opts node.EventLogOptions) (*node.Node, *node.EventLog) {
	t.Helper()
	n := nodetest.New(t, home, node.DefaultConfig(node.ProfileLocal), node.Options{})
	l := node.NewEventLog(opts)
	n.Attach(l)
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return n, l
}

// all is every record of the log, oldest first.
func all(t testing.TB, l *node.EventLog) []node.EventRecord {
	t.Helper()
	var out []node.EventRecord
	for {
		page, err := l.Query(node.EventQuery{After: lastSeq(out), Limit: node.MaxEventLimit})
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
	}
}

func lastSeq(recs []node.EventRecord) uint64 {
	if len(recs) == 0 {
		return 0
	}
	return recs[len(recs)-1].Seq
}

// waitFor waits until the log holds a record with message msg and returns the log's records.
func waitFor(t testing.TB, l *node.EventLog, msg string) []node.EventRecord {
	t.Helper()
	var recs []node.EventRecord
	testwait.Eventually(t, 10*time.Second, func() error {
		recs = all(t, l)
		if !slices.ContainsFunc(recs, func(r node.EventRecord) bool { return r.Message == msg }) {
			return fmt.Errorf("no record %q yet among %d", msg, len(recs))
		}
		return nil
	})
	return recs
}

// messages are the records' messages; it checks that their Seqs follow each other.
func messages(t testing.TB, recs []node.EventRecord) []string {
	t.Helper()
	if err := gap(recs); err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Message
	}
	return out
}

// gap says where the Seqs of recs do not follow each other.
func gap(recs []node.EventRecord) error {
	for i := 1; i < len(recs); i++ {
		if recs[i].Seq != recs[i-1].Seq+1 {
			return fmt.Errorf("record %d has seq %d after %d: the log has a gap", i, recs[i].Seq, recs[i-1].Seq)
		}
	}
	return nil
}

// TestEventLogKeepsOrderAcrossRestarts: the log records the Loggable events of listed kinds in
// the order they were published, events still queued when the node closes included; a restarted
// node reads the same records and numbers its new ones on from the last.
func TestEventLogKeepsOrderAcrossRestarts(t *testing.T) {
	home := node.Home{Dir: t.TempDir()}
	first, l := startLogged(t, home, node.EventLogOptions{})
	var want []string
	for i := range 40 {
		msg := fmt.Sprintf("event %d", i)
		first.Events().Publish(happened{node.EventKinds()[i%len(node.EventKinds())], "", msg})
		first.Events().Publish("not loggable")
		first.Events().Publish(happened{"bogus.kind", "", "unlisted " + msg})
		want = append(want, msg)
	}
	recs := waitFor(t, l, "event 39")
	if got := messages(t, recs); !slices.Equal(got, want) || recs[0].Seq != 1 {
		t.Fatalf("records (from seq %d):\n%q\nwant\n%q", recs[0].Seq, got, want)
	}
	if r := recs[3]; r.Kind != node.EventKinds()[3] || r.Time.IsZero() || string(r.Data) != `{"msg":"event 3"}` {
		t.Fatalf("record 4 = %+v; want its kind, a time and its data", r)
	}

	// Events published right before Close are stored by Close.
	for i := 40; i < 50; i++ {
		msg := fmt.Sprintf("event %d", i)
		first.Events().Publish(happened{node.KindMachineAdded, "", msg})
		want = append(want, msg)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	second, l := startLogged(t, home, node.EventLogOptions{})
	second.Events().Publish(happened{node.KindMachineRemoved, "", "after the restart"})
	want = append(want, "after the restart")
	recs = waitFor(t, l, "after the restart")
	if got := messages(t, recs); !slices.Equal(got, want) || recs[0].Seq != 1 {
		t.Fatalf("records after the restart (from seq %d):\n%q\nwant\n%q", recs[0].Seq, got, want)
	}
}

// TestEventLogRetention: the log keeps at most MaxRecords, the newest, removing the oldest in
// batches, and goes on numbering from its last record after a restart.
func TestEventLogRetention(t *testing.T) {
	const keep = 64 // trims to 60 when it would hold 65
	home := node.Home{Dir: t.TempDir()}
	n, l := startLogged(t, home, node.EventLogOptions{MaxRecords: keep})
	for i := range 300 {
		n.Events().Publish(happened{node.KindVMStatus, "", fmt.Sprintf("event %d", i)})
	}
	// The oldest are removed right after a write: wait for it.
	check := func(last uint64) {
		t.Helper()
		testwait.Eventually(t, 10*time.Second, func() error {
			recs := all(t, l)
			if err := gap(recs); err != nil {
				return err // a page read while the oldest were removed
			}
			if len(recs) > keep || len(recs) < keep-keep/16 || lastSeq(recs) != last {
				return fmt.Errorf("the log holds %d records up to seq %d; want between %d and %d, the newest ending at %d",
					len(recs), lastSeq(recs), keep-keep/16, keep, last)
			}
			return nil
		})
	}
	check(300)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n, l = startLogged(t, home, node.EventLogOptions{MaxRecords: keep})
	for i := 300; i < 310; i++ {
		n.Events().Publish(happened{node.KindVMStatus, "", fmt.Sprintf("event %d", i)})
	}
	check(310)
}

// TestEventLogRecordsItsOverflow: a log that falls more than its queue behind the event stream
// (here: its writes wait for another transaction) records that events were lost wherever they
// were, and goes on recording the events published after.
func TestEventLogRecordsItsOverflow(t *testing.T) {
	n, l := startLogged(t, node.Home{Dir: t.TempDir()}, node.EventLogOptions{Queue: 8})
	holding, release := make(chan struct{}), make(chan struct{})
	held := make(chan error, 1)
	go func() {
		held <- n.Store().Space("test/").Update(func(*node.Txn) error {
			close(holding)
			<-release
			return nil
		})
	}()
	<-holding
	// The writer takes at most one batch before its write waits: the rest overflows its queue.
	const published = 2000
	for i := range published {
		n.Events().Publish(happened{node.KindVMStatus, "", fmt.Sprintf("event %d", i)})
	}
	close(release)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	// The writer resubscribes when it finds its subscription cut off: what is published before
	// is lost too, and recorded so.
	var recs []node.EventRecord
	testwait.Eventually(t, 10*time.Second, func() error {
		n.Events().Publish(happened{node.KindVMStatus, "", "after"})
		recs = all(t, l)
		if !slices.ContainsFunc(recs, func(r node.EventRecord) bool { return r.Message == "after" }) {
			return fmt.Errorf("no event after the overflow recorded yet among %d records", len(recs))
		}
		return nil
	})
	messages(t, recs)
	next, lost, events := 0, false, 0
	for _, r := range recs {
		if r.Kind == node.KindEventsLost {
			lost = true
			continue
		}
		if r.Message == "after" {
			break
		}
		var i int
		if _, err := fmt.Sscanf(r.Message, "event %d", &i); err != nil {
			t.Fatalf("record %+v", r)
		}
		if i != next && !lost {
			t.Fatalf("event %d follows event %d with no record of the loss between them", i, next-1)
		}
		next, lost, events = i+1, false, events+1
	}
	if events > published-8 {
		t.Fatalf("%d of %d events recorded; the queue of 8 cannot have held them", events, published)
	}
}

// queriedRecords are a fixed log for the query tests: seq i+1 is queriedRecords[i].
var queriedRecords = []happened{
	{node.KindMachineAdded, "", "m1 added"},
	{node.KindVMStatus, vmA, "a stored"},
	{node.KindVMStatus, vmB, "b stored"},
	{node.KindLeaseCreated, vmA, "lease of a"},
	{node.KindVMStatus, vmA, "a started"},
	{node.KindMachineRemoved, "", "m1 removed"},
}

const (
	vmA = "3f2a1b2c-0000-4000-8000-00000000000a"
	vmB = "3f2a9999-0000-4000-8000-00000000000b"
)

func startQueried(t *testing.T) (*node.Node, *node.EventLog) {
	t.Helper()
	n, l := startLogged(t, node.Home{Dir: t.TempDir()}, node.EventLogOptions{})
	for _, h := range queriedRecords {
		n.Events().Publish(h)
	}
	waitFor(t, l, queriedRecords[len(queriedRecords)-1].msg)
	return n, l
}

// seqs are the Seqs of recs.
func seqs(recs []node.EventRecord) []uint64 {
	out := []uint64{}
	for _, r := range recs {
		out = append(out, r.Seq)
	}
	return out
}

func TestEventLogQuery(t *testing.T) {
	_, l := startQueried(t)
	for _, tc := range []struct {
		name string
		q    node.EventQuery
		want []uint64
	}{
		{"everything", node.EventQuery{}, []uint64{1, 2, 3, 4, 5, 6}},
		{"after", node.EventQuery{After: 4}, []uint64{5, 6}},
		{"after the end", node.EventQuery{After: 6}, []uint64{}},
		{"a kind", node.EventQuery{Kind: node.KindVMStatus}, []uint64{2, 3, 5}},
		{"a family", node.EventQuery{Kind: "machine"}, []uint64{1, 6}},
		{"a vm by its prefix in capitals", node.EventQuery{VM: "3F2A1B"}, []uint64{2, 4, 5}},
		{"a prefix of two vms", node.EventQuery{VM: "3f2a"}, []uint64{2, 3, 4, 5}},
		{"a vm by its ID without dashes", node.EventQuery{VM: strings.ReplaceAll(vmB, "-", "")}, []uint64{3}},
		{"a vm and a kind", node.EventQuery{VM: vmA, Kind: "vm"}, []uint64{2, 5}},
		{"the oldest two", node.EventQuery{Limit: 2}, []uint64{1, 2}},
		{"the newest two", node.EventQuery{Limit: 2, Newest: true}, []uint64{5, 6}},
		{"the newest two of a kind", node.EventQuery{Kind: node.KindVMStatus, Limit: 2, Newest: true}, []uint64{3, 5}},
		{"the newest after", node.EventQuery{After: 5, Limit: 10, Newest: true}, []uint64{6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := l.Query(tc.q)
			if err != nil || !slices.Equal(seqs(recs), tc.want) {
				t.Fatalf("Query(%+v) = %v, %v; want %v", tc.q, seqs(recs), err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name string
		q    node.EventQuery
		want string
	}{
		{"unknown kind", node.EventQuery{Kind: "vm.exploded"}, `kind "vm.exploded" is unknown: use one of vm.status`},
		{"limit too large", node.EventQuery{Limit: node.MaxEventLimit + 1}, "out of range"},
		{"negative limit", node.EventQuery{Limit: -1}, "out of range"},
		{"vm not hex", node.EventQuery{VM: "xyz"}, "not a VM ID"},
		{"vm too long", node.EventQuery{VM: strings.Repeat("a", 33)}, "not a VM ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := l.Query(tc.q)
			if !errors.Is(err, node.ErrInvalidEventQuery) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Query(%+v): %v; want ErrInvalidEventQuery saying %q", tc.q, err, tc.want)
			}
		})
	}
}

func TestParseEventQuery(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want node.EventQuery
		err  string
	}{
		{"", node.EventQuery{}, ""},
		{"after=7&vm=3F2A&kind=vm&limit=20&newest=true&follow=true&other=ignored",
			node.EventQuery{After: 7, VM: "3F2A", Kind: "vm", Limit: 20, Newest: true}, ""},
		{"after=x", node.EventQuery{}, `after "x" is not a sequence number`},
		{"after=-1", node.EventQuery{}, "not a sequence number"},
		{"limit=0", node.EventQuery{}, `limit "0" is not a number of records`},
		{"limit=1001", node.EventQuery{}, "out of range"},
		{"newest=maybe", node.EventQuery{}, `newest "maybe" is not true or false`},
		{"kind=nope", node.EventQuery{}, `kind "nope" is unknown`},
		{"vm=../../etc", node.EventQuery{}, "not a VM ID"},
		{"after=1&after=2", node.EventQuery{}, "after is given 2 times"},
		{"follow=true&follow=false", node.EventQuery{}, "follow is given 2 times"},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			v, err := url.ParseQuery(tc.raw)
			if err != nil {
				t.Fatal(err)
			}
			got, err := node.ParseEventQuery(v)
			if tc.err != "" {
				if !errors.Is(err, node.ErrInvalidEventQuery) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseEventQuery(%q): %+v, %v; want ErrInvalidEventQuery saying %q", tc.raw, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseEventQuery(%q) = %+v, %v; want %+v", tc.raw, got, err, tc.want)
			}
		})
	}
}

// FuzzParseEventQuery: any query string parses to a query that Values writes back as itself,
// or to an error; never a panic.
func FuzzParseEventQuery(f *testing.F) {
	f.Add("after=7&vm=3F2A&kind=vm&limit=20&newest=true")
	f.Add("after=18446744073709551615&kind=machine.added")
	f.Add("limit=-1&vm=--&newest=1")
	f.Add("after=1&after=2")
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, err := node.ParseEventQuery(v)
		if err != nil {
			if !errors.Is(err, node.ErrInvalidEventQuery) {
				t.Fatalf("error %v does not wrap ErrInvalidEventQuery", err)
			}
			return
		}
		again, err := node.ParseEventQuery(q.Values())
		if err != nil || again != q {
			t.Fatalf("%q parsed as %+v, written as %q, parsed again as %+v, %v", raw, q, q.Values().Encode(), again, err)
		}
	})
}

// TestEventsAPI: GET /v1/events answers the records a query selects, refuses bad parameters
// with a 400 and a code, and with follow=true streams the records after the query's as they
// are written, until the client goes away or the node stops.
func TestEventsAPI(t *testing.T) {
	n, _ := startQueried(t)
	addr, err := n.Home().APIAddr()
	if err != nil {
		t.Fatal(err)
	}
	token, _ := n.Home().Token()
	get := func(query, auth string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/events"+query, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, raw
	}
	for _, tc := range []struct {
		query string
		want  []uint64
	}{
		{"", []uint64{1, 2, 3, 4, 5, 6}},
		{"?kind=machine", []uint64{1, 6}},
		{"?vm=3f2a1b&kind=vm.status", []uint64{2, 5}},
		{"?after=2&limit=2", []uint64{3, 4}},
		{"?newest=true&limit=1", []uint64{6}},
		{"?after=6", []uint64{}},
	} {
		t.Run("query"+tc.query, func(t *testing.T) {
			status, raw := get(tc.query, "Bearer "+token)
			var recs []node.EventRecord
			if err := json.Unmarshal(raw, &recs); status != http.StatusOK || err != nil || !slices.Equal(seqs(recs), tc.want) {
				t.Fatalf("GET /v1/events%s: %d %s; want 200 with records %v", tc.query, status, raw, tc.want)
			}
		})
	}
	for _, query := range []string{"?after=x", "?after=-1", "?limit=0", "?limit=5000", "?kind=nope", "?vm=zz",
		"?after=1&after=2", "?follow=maybe"} {
		t.Run("refused"+query, func(t *testing.T) {
			status, raw := get(query, "Bearer "+token)
			var eb node.ErrorBody
			if err := json.Unmarshal(raw, &eb); status != http.StatusBadRequest || err != nil || eb.Code != "invalid_query" || eb.Message == "" {
				t.Fatalf("GET /v1/events%s: %d %s; want 400 with code invalid_query and a message", query, status, raw)
			}
		})
	}
	if status, _ := get("", ""); status != http.StatusUnauthorized {
		t.Fatalf("GET /v1/events without the token: %d, want 401", status)
	}

	c, err := node.Dial(n.Home())
	if err != nil {
		t.Fatal(err)
	}
	got, ended, stop := follow(t, c, "?follow=true&after=4&kind=vm")
	expect(t, got, 5, "a started") // what was there when it began
	n.Events().Publish(happened{node.KindMachineAdded, "", "not followed"})
	n.Events().Publish(happened{node.KindVMStatus, vmB, "b started"})
	expect(t, got, 8, "b started") // published after the request began
	stop()
	if err := waitEnded(t, ended); !errors.Is(err, context.Canceled) {
		t.Fatalf("a follower that went away: %v, want context.Canceled", err)
	}

	// A follower does not hold up the node's Close; its answer ends there.
	got, ended, _ = follow(t, c, "?follow=true&newest=true&limit=1")
	expect(t, got, 8, "b started")
	if err := n.Close(); err != nil {
		t.Fatalf("close with a follower: %v", err)
	}
	if err := waitEnded(t, ended); err != nil {
		t.Fatalf("a follower of a node that closed: %v, want the answer to end", err)
	}
}

// TestEventsFollowOutlastsTheReadTimeout: a follower still receives records after the time the
// API server gives a request to be read.
func TestEventsFollowOutlastsTheReadTimeout(t *testing.T) {
	t.Parallel()
	n, _ := startLogged(t, node.Home{Dir: t.TempDir()}, node.EventLogOptions{})
	c, err := node.Dial(n.Home())
	if err != nil {
		t.Fatal(err)
	}
	got, ended, stop := follow(t, c, "?follow=true")
	defer stop()
	n.Events().Publish(happened{node.KindMachineAdded, "", "early"})
	expect(t, got, 1, "early")
	time.Sleep(node.APIReadTimeout + 2*time.Second)
	n.Events().Publish(happened{node.KindMachineEdited, "", "late"})
	expect(t, got, 2, "late")
	select {
	case err := <-ended:
		t.Fatalf("the follow ended: %v", err)
	default:
	}
}

// follow starts following path with c; it returns the records received, the channel that
// gets Stream's result, and a function that stops following.
func follow(t *testing.T, c *node.Client, path string) (<-chan node.EventRecord, <-chan error, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	got, ended := make(chan node.EventRecord, 100), make(chan error, 1)
	go func() {
		ended <- c.Stream(ctx, "/v1/events"+path, func(line []byte) error {
			var rec node.EventRecord
			if err := json.Unmarshal(line, &rec); err != nil {
				return err
			}
			got <- rec
			return nil
		})
	}()
	return got, ended, cancel
}

// expect waits for the next record a follower receives and checks it.
func expect(t *testing.T, got <-chan node.EventRecord, seq uint64, msg string) {
	t.Helper()
	select {
	case rec := <-got:
		if rec.Seq != seq || rec.Message != msg {
			t.Fatalf("followed record %d %q; want %d %q", rec.Seq, rec.Message, seq, msg)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no record %d %q within 10s", seq, msg)
	}
}

func waitEnded(t *testing.T, ended <-chan error) error {
	t.Helper()
	select {
	case err := <-ended:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the follow did not end within 10s")
		return nil
	}
}

func TestRecordData(t *testing.T) {
	if got := node.RecordData(map[string]int{"a": 1}); string(got) != `{"a":1}` {
		t.Errorf("RecordData = %s", got)
	}
	if got := node.RecordData(func() {}); got != nil {
		t.Errorf("RecordData of a value JSON cannot encode = %s, want nil", got)
	}
	raw, err := json.Marshal(node.EventRecord{Seq: 1, Kind: node.KindVMStatus, Message: "m"})
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{`"vm"`, `"lease"`, `"peer"`, `"data"`} {
		if strings.Contains(string(raw), field) {
			t.Errorf("a record without %s encodes it: %s", field, raw)
		}
	}
}
