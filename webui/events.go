package webui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/virtuoso-market/virtuoso/node"
)

// eventWriteTimeout is how long a page may take one event before its stream is dropped.
const eventWriteTimeout = 30 * time.Second

// events answers GET /ui/events with the node's event log as server-sent events: the records
// that GET /v1/events?follow=true would answer (same parameters), one "record" event each,
// with the record's Seq as the event's id, so that a page that reconnects (Last-Event-ID)
// misses nothing.
func (u *UI) events(w http.ResponseWriter, r *http.Request, _ *session) {
	if u.opts.EventLog == nil {
		node.WriteError(w, node.WithStatus(http.StatusServiceUnavailable, errors.New("this node keeps no event log")))
		return
	}
	q, err := node.ParseEventQuery(r.URL.Query())
	if err != nil {
		node.WriteError(w, node.WithCode(http.StatusBadRequest, "invalid_query", err))
		return
	}
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		if q.After, err = strconv.ParseUint(id, 10, 64); err != nil {
			node.WriteError(w, node.WithCode(http.StatusBadRequest, "invalid_query", fmt.Errorf("Last-Event-ID %q is not a sequence number", id)))
			return
		}
		q.Newest = false
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(u.api.Stopping(), cancel)()
	defer context.AfterFunc(u.ctx, cancel)()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	// A comment first, so that the page's EventSource opens before the first record.
	if _, err := fmt.Fprint(w, ": virtuoso events\n\n"); err != nil || rc.Flush() != nil {
		return
	}
	defer rc.SetWriteDeadline(time.Time{})
	u.opts.EventLog.Follow(ctx, q, func(rec node.EventRecord) error {
		data, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if err := rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout)); err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "id: %d\nevent: record\ndata: %s\n\n", rec.Seq, data); err != nil {
			return err
		}
		return rc.Flush()
	})
}
