package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/virtuoso-market/virtuoso/node"
)

// eventsSummary is the help of `virtuoso events`, with the kinds of records the node knows.
func eventsSummary() string {
	return `Print the node's event log: what happened on it, in order, one line a record (time, kind,
what happened). The newest -n records; with --follow, then every new one as it happens, until
Ctrl-C. The log keeps the newest events.max_records of its config.

The kinds of records (--kind takes one, or the part before the dot for a whole family):
  ` + strings.Join(node.EventKinds(), " ")
}

func runEvents(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "events")
	follow := f.Bool("follow", false, "after the newest records, print each new one as it happens, until Ctrl-C")
	vmID := f.String("vm", "", "only the records of this VM: its ID, or its first characters")
	kind := f.String("kind", "", "only the records of this kind, or of this family (see above)")
	n := f.Int("n", 20, fmt.Sprintf("how many of the newest records to print, 1 to %d", node.MaxEventLimit))
	asJSON := f.Bool("json", false, "print each record as JSON, one a line")
	if err := f.parse(args, eventsSummary()); err != nil {
		return err
	}
	if *n < 1 || *n > node.MaxEventLimit {
		return fmt.Errorf("-n %d is out of range: print 1 to %d records", *n, node.MaxEventLimit)
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	show := func(rec node.EventRecord) error {
		if *asJSON {
			raw, err := json.Marshal(rec)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(env.Stdout, "%s\n", raw)
			return err
		}
		_, err := fmt.Fprintf(env.Stdout, "%s  %-15s  %s\n", rec.Time.Local().Format("2006-01-02 15:04:05.000"), rec.Kind, rec.Message)
		return err
	}
	q := node.EventQuery{VM: *vmID, Kind: *kind, Limit: *n, Newest: true}.Values()
	if !*follow {
		var recs []node.EventRecord
		if err := c.Get(ctx, "/v1/events?"+q.Encode(), &recs); err != nil {
			return err
		}
		for _, rec := range recs {
			if err := show(rec); err != nil {
				return err
			}
		}
		return nil
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	q.Set("follow", "true")
	err = c.Stream(ctx, "/v1/events?"+q.Encode(), func(line []byte) error {
		var rec node.EventRecord
		if err := json.Unmarshal(line, &rec); err != nil {
			return fmt.Errorf("the node sent a record that does not decode (%w): is it of another version than this command?", err)
		}
		return show(rec)
	})
	switch {
	case ctx.Err() != nil:
		return nil // Ctrl-C
	case err != nil:
		return err
	}
	return errors.New("the node ended the event stream: it stopped; start it again and rerun `virtuoso events --follow`")
}
