package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The kinds of the event log's records. Every record has one of them; a Loggable event of a
// kind not listed here is not recorded, so a package that publishes a new kind of event adds
// its kind here. A kind is "family.what"; queries name a kind or a whole family.
const (
	// KindVMStatus: a VM changed status on this provider (vm.StatusChanged).
	KindVMStatus = "vm.status"
	// KindVMChanged: the buyer's record of one of its VMs changed: stored, an action's answer,
	// a status refreshed from the provider, its lease ended (market.VMChanged).
	KindVMChanged = "vm.changed"
	// KindLeaseCreated: a lease was countersigned (market.LeaseCreated).
	KindLeaseCreated = "lease.created"
	// KindLeaseEnded: a lease ended: its VM deleted by its owner, or evicted with its machine
	// (market.LeaseEnded).
	KindLeaseEnded = "lease.ended"
	// KindMachineAdded, KindMachineEdited, KindMachineRemoved: a provider added, edited or
	// removed one of its machines (market.MachineChanged).
	KindMachineAdded   = "machine.added"
	KindMachineEdited  = "machine.edited"
	KindMachineRemoved = "machine.removed"
	// KindEventsLost: the log missed events: it fell too far behind the event stream, or
	// could not store them. What happened just before it is incomplete.
	KindEventsLost = "events.lost"
	// The ledger's records (ledger.Event): this node's account was charged or credited for
	// storage and running, received or sent a payment, was warned that its balance will not
	// pay its coming periods, was told to stop a VM whose running period went unpaid, had an
	// entry refused by the coordinators, or was shown evidence against a coordinator.
	KindLedgerCharged  = "ledger.charged"
	KindLedgerPayment  = "ledger.payment"
	KindLedgerLow      = "ledger.low_balance"
	KindLedgerStop     = "ledger.stop"
	KindLedgerRefused  = "ledger.refused"
	KindLedgerEvidence = "ledger.evidence"
	// KindMigrationStep: a migration the buyer's node runs took a step, or its destination did
	// (market.MigrationStep).
	KindMigrationStep = "migration.step"
)

// EventKinds lists every kind of record, in the order of the constants above.
func EventKinds() []string {
	return []string{KindVMStatus, KindVMChanged, KindLeaseCreated, KindLeaseEnded,
		KindMachineAdded, KindMachineEdited, KindMachineRemoved, KindEventsLost,
		KindLedgerCharged, KindLedgerPayment, KindLedgerLow, KindLedgerStop, KindLedgerRefused, KindLedgerEvidence, KindMigrationStep}
}

// EventRecord is one entry of the event log.
type EventRecord struct {
	// Seq is the record's place in the log: one more than the record before it. The log
	// assigns it.
	Seq uint64 `json:"seq"`
	// Time is when the event happened, as its publisher says; the time the log took it if
	// the publisher gave none.
	Time time.Time `json:"time"`
	// Kind is one of EventKinds.
	Kind string `json:"kind"`
	// VM and Lease are the IDs of the VM and the lease the event is about, if any.
	VM    string `json:"vm,omitempty"`
	Lease string `json:"lease,omitempty"`
	// Peer is the other peer the event names, if any: a VM's owner, a lease's buyer, the
	// provider a buyer's VM is stored on.
	Peer string `json:"peer,omitempty"`
	// Message says what happened, in one line for people to read.
	Message string `json:"message"`
	// Data is the event's details as JSON, for programs; at most MaxEventData bytes (larger
	// details are left out).
	Data json.RawMessage `json:"data,omitempty"`
}

// Loggable is an event value that belongs in the event log: a package publishing events on
// the node's Events implements it on those that say what happened on the node. LogRecord
// fills Kind (one of EventKinds), Message and, where they apply, Time, VM, Lease, Peer and
// Data (RecordData makes it); the log assigns Seq. It must be cheap and must not block: the
// log calls it as it takes each event off the stream.
type Loggable interface {
	LogRecord() EventRecord
}

// RecordData is v's JSON, for an EventRecord's Data; nil if v does not encode.
func RecordData(v any) json.RawMessage {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	return raw
}

// Limits of the event log.
const (
	// DefaultMaxEventRecords is how many records a log keeps unless told otherwise.
	DefaultMaxEventRecords = 100_000
	// DefaultEventLimit and MaxEventLimit bound how many records one query answers.
	DefaultEventLimit = 100
	MaxEventLimit     = 1000
	// MaxEventData caps a record's Data.
	MaxEventData = 16 << 10
)

// ErrInvalidEventQuery marks an EventQuery, or query parameters, out of range.
var ErrInvalidEventQuery = errors.New("invalid event query")

// ErrEventLogClosed is what Follow returns once the log is closed.
var ErrEventLogClosed = errors.New("event log closed")

// EventLogOptions tune an EventLog; the zero value is the default.
type EventLogOptions struct {
	// MaxRecords is how many records the log keeps (DefaultMaxEventRecords if 0): past it,
	// the oldest are removed in batches, a sixteenth of it (at most 1024) at a time.
	MaxRecords int
	// Queue is how many events the log's subscription holds before it is cut off
	// (DefaultEventQueue if 0).
	Queue int
	// Logger is where the log reports what it cannot record; the node's if nil.
	Logger *slog.Logger
}

// EventLog is the node's event log (report §6.1.10), a Service: its record of what happened on
// the node, in the order it happened. From Start to Close it takes the events of the node's
// event stream (Events) that are Loggable and stores each under the next sequence number in the
// node's database, so that reading the log shows the order of the marketplace's calls and
// where each came from. It survives restarts, keeps a bounded number of records, and answers
// queries and followers, here and through the local API:
//
//	GET /v1/events?after=SEQ&vm=ID&kind=KIND&limit=N&newest=true&follow=true
//
// answers a JSON array of EventRecords in order: those after SEQ (default 0), of the VM whose
// ID starts with ID (any case, dashes optional), of kind KIND or of the family KIND ("machine"
// is machine.added, machine.edited and machine.removed), at most N (default DefaultEventLimit,
// at most MaxEventLimit): the oldest N that match, or with newest=true the newest N. With
// follow=true the answer is newline-delimited JSON instead, one record a line, flushed as each
// is written: the records the query answers, then every later record that matches, until the
// client goes away or the node stops. A bad parameter is a 400 with code "invalid_query";
// unknown parameters are ignored.
//
// Attach it before the services whose events it records, so that it hears them from their
// start.
type EventLog struct {
	opts  EventLogOptions
	n     *Node
	space *Space
	log   *slog.Logger

	mu      sync.Mutex
	last    uint64        // the newest record's Seq; every record up to it is committed
	written chan struct{} // closed, and replaced, when records after last are committed

	// The writer goroutine's own.
	first   uint64 // the oldest record's Seq; 0 while the log is empty
	lost    int    // events the writer failed to store since it last could, and why
	lostErr error

	stop    context.CancelFunc
	stopped <-chan struct{} // closed by Close
	done    chan struct{}   // closed when the writer has stored what it took and exited
}

// eventSpace is the log's key space in the node's Store: one record at each fixed-width
// decimal Seq, so that key order is Seq order.
const eventSpace = "node/events/"

func eventKey(seq uint64) string { return fmt.Sprintf("%020d", seq) }

// Writer limits: events taken off the stream at once; bytes of records stored, and records
// deleted when the log trims its oldest, in one transaction (badger refuses too large a one).
const (
	writeBatch = 256
	writeBytes = 256 << 10
	trimBatch  = 1024
)

// followWriteTimeout is how long a follower's connection may take one record before it is
// dropped (the API server sets no write timeout of its own).
const followWriteTimeout = 30 * time.Second

// NewEventLog returns a log to Attach to a node; it records from Start on.
func NewEventLog(opts EventLogOptions) *EventLog {
	if opts.MaxRecords <= 0 {
		opts.MaxRecords = DefaultMaxEventRecords
	}
	if opts.Queue <= 0 {
		opts.Queue = DefaultEventQueue
	}
	return &EventLog{opts: opts, written: make(chan struct{})}
}

// Start finds where the stored log ends, subscribes to the node's events, starts the writer
// and adds the /v1/events route.
func (l *EventLog) Start(ctx context.Context, n *Node) error {
	l.n, l.space, l.log = n, n.Store().Space(eventSpace), l.opts.Logger
	if l.log == nil {
		l.log = n.Logger()
	}
	l.log = l.log.With("service", "eventlog")
	err := l.space.View(func(tx *Txn) error {
		if err := tx.Scan("", "", false, func(key string, _ []byte) error {
			l.first, _ = strconv.ParseUint(key, 10, 64)
			return ErrStop
		}); err != nil {
			return err
		}
		return tx.Scan("", "", true, func(key string, _ []byte) error {
			l.last, _ = strconv.ParseUint(key, 10, 64)
			return ErrStop
		})
	})
	if err != nil {
		return fmt.Errorf("event log: find the end of the stored log: %w", err)
	}
	sub := n.Events().Subscribe(l.opts.Queue)
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	l.stop, l.stopped, l.done = stop, wctx.Done(), make(chan struct{})
	go l.run(wctx, sub)
	n.API().Handle("GET /v1/events", http.HandlerFunc(l.serve))
	return nil
}

// Close stores the events taken so far and stops the writer.
func (l *EventLog) Close() error {
	if l.stop == nil {
		return nil
	}
	l.stop()
	<-l.done
	return nil
}

// run takes events off sub and stores them until ctx is done, then stores what is still
// queued. A subscription cut off for falling behind is replaced, and the loss recorded.
func (l *EventLog) run(ctx context.Context, sub *Subscription) {
	defer close(l.done)
	for {
		ev, err := sub.Wait(ctx)
		if errors.Is(err, ErrEventsOverflow) {
			sub = l.n.Events().Subscribe(l.opts.Queue)
			l.log.Warn("the event log fell behind the node's events and lost some", "queue", l.opts.Queue)
			l.write([]EventRecord{{Kind: KindEventsLost, Time: time.Now().UTC(),
				Message: fmt.Sprintf("events were lost: the log fell more than %d events behind the node's event stream; what happened just before this is incomplete", l.opts.Queue)}})
			continue
		}
		if err != nil {
			for {
				ev, ok := sub.Next()
				if !ok {
					break
				}
				l.write(l.take(sub, ev))
			}
			sub.Close()
			return
		}
		l.write(l.take(sub, ev))
	}
}

// take returns the records of ev and of up to writeBatch-1 more events queued on sub, of
// those that belong in the log.
func (l *EventLog) take(sub *Subscription, ev any) []EventRecord {
	var recs []EventRecord
	for n := 1; ; n++ {
		if rec, ok := l.record(ev); ok {
			recs = append(recs, rec)
		}
		if n == writeBatch {
			return recs
		}
		var more bool
		if ev, more = sub.Next(); !more {
			return recs
		}
	}
}

// record is ev's record, if ev belongs in the log.
func (l *EventLog) record(ev any) (EventRecord, bool) {
	lg, ok := ev.(Loggable)
	if !ok {
		return EventRecord{}, false
	}
	rec := lg.LogRecord()
	if !slices.Contains(EventKinds(), rec.Kind) {
		l.log.Warn("an event of a kind the log does not list is not recorded: add its kind to node.EventKinds", "kind", rec.Kind, "event", fmt.Sprintf("%T", ev))
		return EventRecord{}, false
	}
	if rec.Time.IsZero() {
		rec.Time = time.Now()
	}
	rec.Time = rec.Time.UTC()
	if len(rec.Data) > MaxEventData || len(rec.Data) > 0 && !json.Valid(rec.Data) {
		rec.Data = nil
	}
	return rec, true
}

// write stores recs under the next sequence numbers, wakes the followers and trims the log.
// Records it cannot store are counted, and the loss recorded with the next write.
func (l *EventLog) write(recs []EventRecord) {
	reported := l.lost > 0 // recs[0] reports the earlier loss
	if reported {
		recs = append([]EventRecord{{Kind: KindEventsLost, Time: time.Now().UTC(),
			Message: fmt.Sprintf("events were lost: %d could not be stored (%v)", l.lost, l.lostErr)}}, recs...)
	}
	for len(recs) > 0 {
		n, err := l.commit(recs)
		if err != nil {
			if reported {
				recs = recs[1:] // the earlier loss is still counted
			}
			l.lost, l.lostErr = l.lost+len(recs), err
			l.log.Error("the event log cannot store records", "records", len(recs), "err", err)
			return
		}
		if reported {
			l.lost, l.lostErr, reported = 0, nil, false
		}
		recs = recs[n:]
	}
	l.trim()
}

// commit stores the first records of recs, up to writeBytes of them, in one transaction and
// wakes the followers; it returns how many it stored.
func (l *EventLog) commit(recs []EventRecord) (int, error) {
	seq, n, size := l.last, 0, 0 // only the writer changes l.last
	err := l.space.Update(func(tx *Txn) error {
		for ; n < len(recs) && size < writeBytes; n++ {
			seq++
			recs[n].Seq = seq
			raw, err := json.Marshal(recs[n])
			if err != nil {
				return fmt.Errorf("encode %s record: %w", recs[n].Kind, err)
			}
			if err := tx.Put(eventKey(seq), raw); err != nil {
				return err
			}
			size += len(raw)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if l.first == 0 {
		l.first = recs[0].Seq
	}
	l.mu.Lock()
	l.last = seq
	close(l.written)
	l.written = make(chan struct{})
	l.mu.Unlock()
	return n, nil
}

// trim removes the oldest records once the log holds more than MaxRecords, down to
// MaxRecords less a sixteenth (at most trimBatch), so that it trims in batches.
func (l *EventLog) trim() {
	keep := uint64(l.opts.MaxRecords)
	if l.last-l.first+1 <= keep {
		return
	}
	keep -= min(keep/16, trimBatch)
	until := l.last - keep // the newest Seq removed
	for l.first <= until {
		end := min(until, l.first+trimBatch-1)
		err := l.space.Update(func(tx *Txn) error {
			for seq := l.first; seq <= end; seq++ {
				if err := tx.Delete(eventKey(seq)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			l.log.Warn("the event log cannot remove its oldest records; it tries again at its next write", "err", err)
			return
		}
		l.first = end + 1
	}
}

// EventQuery selects records of the log. The zero value asks for the oldest DefaultEventLimit.
type EventQuery struct {
	// After: only records with a greater Seq.
	After uint64
	// VM: only records of a VM whose ID starts with this (any case, dashes optional).
	VM string
	// Kind: only records of this kind, or of this family ("machine": machine.added, ...).
	Kind string
	// Limit: at most this many records (DefaultEventLimit if 0, at most MaxEventLimit).
	Limit int
	// Newest answers the newest Limit matching records rather than the oldest; in order
	// all the same.
	Newest bool
}

// normal is q checked, with its defaults filled in and its VM as records are matched.
func (q EventQuery) normal() (EventQuery, error) {
	if q.Limit == 0 {
		q.Limit = DefaultEventLimit
	}
	if q.Limit < 1 || q.Limit > MaxEventLimit {
		return q, fmt.Errorf("%w: limit %d is out of range: ask for 1 to %d records", ErrInvalidEventQuery, q.Limit, MaxEventLimit)
	}
	vm := strings.ToLower(strings.ReplaceAll(q.VM, "-", ""))
	if len(vm) > 32 || strings.Trim(vm, "0123456789abcdef") != "" {
		return q, fmt.Errorf("%w: vm %q is not a VM ID: give the ID or its first hex digits", ErrInvalidEventQuery, truncated(q.VM))
	}
	q.VM = vm
	if q.Kind != "" && !slices.ContainsFunc(EventKinds(), func(k string) bool { return matchKind(k, q.Kind) }) {
		return q, fmt.Errorf("%w: kind %q is unknown: use one of %s, or a family (%s)", ErrInvalidEventQuery,
			truncated(q.Kind), strings.Join(EventKinds(), ", "), strings.Join(eventFamilies(), ", "))
	}
	return q, nil
}

// matches reports whether rec passes q's filters (q normal).
func (q EventQuery) matches(rec EventRecord) bool {
	return (q.Kind == "" || matchKind(rec.Kind, q.Kind)) &&
		(q.VM == "" || strings.HasPrefix(strings.ReplaceAll(strings.ToLower(rec.VM), "-", ""), q.VM))
}

// matchKind reports whether kind is want or of the family want.
func matchKind(kind, want string) bool {
	family, _, _ := strings.Cut(kind, ".")
	return kind == want || family == want
}

// eventFamilies lists the families of EventKinds.
func eventFamilies() []string {
	var out []string
	for _, k := range EventKinds() {
		if f, _, _ := strings.Cut(k, "."); !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// truncated cuts text from a request short enough to quote in an error.
func truncated(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// Query answers the records that match q, in order.
func (l *EventLog) Query(q EventQuery) ([]EventRecord, error) {
	q, err := q.normal()
	if err != nil {
		return nil, err
	}
	recs, _, err := l.query(q)
	return recs, err
}

// query answers the records of a normal q, and end: the log's last Seq when it looked, up to
// which it has seen every record.
func (l *EventLog) query(q EventQuery) (recs []EventRecord, end uint64, err error) {
	if l.space == nil {
		return nil, 0, ErrNotStarted
	}
	l.mu.Lock()
	end = l.last
	l.mu.Unlock()
	if q.After >= end {
		return nil, end, nil
	}
	err = l.space.View(func(tx *Txn) error {
		return tx.Scan(eventKey(q.After+1), eventKey(end+1), q.Newest, func(key string, val []byte) error {
			var rec EventRecord
			if err := json.Unmarshal(val, &rec); err != nil {
				return fmt.Errorf("event record %s: %w", key, err)
			}
			if q.matches(rec) {
				recs = append(recs, rec)
			}
			if len(recs) == q.Limit {
				return ErrStop
			}
			return nil
		})
	})
	if err != nil {
		return nil, end, fmt.Errorf("read the event log: %w", err)
	}
	if q.Newest {
		slices.Reverse(recs)
	}
	return recs, end, nil
}

// Follow calls fn with every record that matches q, in order: first those Query answers, then
// each later one as it is written, until ctx is done (ctx's error), the log is closed
// (ErrEventLogClosed) or fn fails (its error).
func (l *EventLog) Follow(ctx context.Context, q EventQuery, fn func(EventRecord) error) error {
	q, err := q.normal()
	if err != nil {
		return err
	}
	if l.space == nil {
		return ErrNotStarted
	}
	for {
		l.mu.Lock()
		written := l.written
		l.mu.Unlock()
		recs, end, err := l.query(q)
		if err != nil {
			return err
		}
		for _, rec := range recs {
			if err := fn(rec); err != nil {
				return err
			}
		}
		if !q.Newest && len(recs) == q.Limit {
			q.After = recs[len(recs)-1].Seq // more may match before end
			continue
		}
		q.After, q.Newest = end, false
		select {
		case <-written:
		case <-ctx.Done():
			return ctx.Err()
		case <-l.stopped:
			return ErrEventLogClosed
		}
	}
}

// ParseEventQuery reads an EventQuery from the parameters of GET /v1/events (after, vm, kind,
// limit, newest; follow is the route's own); others are ignored. A parameter of the route given
// twice is refused, not guessed at. Errors wrap ErrInvalidEventQuery.
func ParseEventQuery(v url.Values) (EventQuery, error) {
	var q EventQuery
	for _, name := range []string{"after", "vm", "kind", "limit", "newest", "follow"} {
		if n := len(v[name]); n > 1 {
			return q, fmt.Errorf("%w: %s is given %d times: give it once", ErrInvalidEventQuery, name, n)
		}
	}
	var err error
	if s := v.Get("after"); s != "" {
		if q.After, err = strconv.ParseUint(s, 10, 64); err != nil {
			return EventQuery{}, fmt.Errorf("%w: after %q is not a sequence number: give a record's seq, or 0 for the start", ErrInvalidEventQuery, truncated(s))
		}
	}
	if s := v.Get("limit"); s != "" {
		if q.Limit, err = strconv.Atoi(s); err != nil || q.Limit == 0 {
			return EventQuery{}, fmt.Errorf("%w: limit %q is not a number of records: ask for 1 to %d", ErrInvalidEventQuery, truncated(s), MaxEventLimit)
		}
	}
	if q.Newest, err = parseFlag("newest", v.Get("newest")); err != nil {
		return EventQuery{}, err
	}
	q.VM, q.Kind = v.Get("vm"), v.Get("kind")
	if _, err := q.normal(); err != nil {
		return EventQuery{}, err
	}
	return q, nil
}

// parseFlag reads a true/false query parameter; empty is false.
func parseFlag(name, s string) (bool, error) {
	if s == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("%w: %s %q is not true or false", ErrInvalidEventQuery, name, truncated(s))
	}
	return b, nil
}

// Values are q as the parameters of GET /v1/events, which ParseEventQuery reads back.
func (q EventQuery) Values() url.Values {
	v := url.Values{}
	if q.After > 0 {
		v.Set("after", strconv.FormatUint(q.After, 10))
	}
	if q.VM != "" {
		v.Set("vm", q.VM)
	}
	if q.Kind != "" {
		v.Set("kind", q.Kind)
	}
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Newest {
		v.Set("newest", "true")
	}
	return v
}

// serve answers GET /v1/events.
func (l *EventLog) serve(w http.ResponseWriter, r *http.Request) {
	params := r.URL.Query()
	q, err := ParseEventQuery(params)
	var follow bool
	if err == nil {
		follow, err = parseFlag("follow", params.Get("follow"))
	}
	if err != nil {
		WriteError(w, WithCode(http.StatusBadRequest, "invalid_query", err))
		return
	}
	if !follow {
		recs, err := l.Query(q)
		if err != nil {
			WriteError(w, WithStatus(http.StatusInternalServerError, err))
			return
		}
		if recs == nil {
			recs = []EventRecord{}
		}
		WriteJSON(w, http.StatusOK, recs)
		return
	}
	l.stream(w, r, q)
}

// stream answers a follower: a record a line, flushed as each comes, until the client goes
// away, the API shuts down or the log closes. The API server's timeouts bound reading a
// request and idle connections, not how long an answer lasts (its read timeout ends once the
// request is read, and a client that goes away is noticed then); what bounds a follower is
// followWriteTimeout, set before each record, since the server has no write timeout.
func (l *EventLog) stream(w http.ResponseWriter, r *http.Request, q EventQuery) {
	rc := http.NewResponseController(w)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(l.n.api.stopping, cancel)()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	enc := json.NewEncoder(w)
	defer rc.SetWriteDeadline(time.Time{}) // the connection may carry another request
	err := l.Follow(ctx, q, func(rec EventRecord) error {
		if err := rc.SetWriteDeadline(time.Now().Add(followWriteTimeout)); err != nil {
			return err
		}
		if err := enc.Encode(rec); err != nil {
			return err
		}
		return rc.Flush()
	})
	if err != nil && ctx.Err() == nil && !errors.Is(err, ErrEventLogClosed) {
		l.log.Debug("event log follower dropped", "err", err)
	}
}
