package bench

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestLedgerSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := RunLedger(ctx, LedgerOptions{Dir: t.TempDir(), Pushers: 2, Entries: 300, Checkpoints: 10, Leases: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if res.Entries != 600 || len(res.Checkpoint) != 10 || res.Leases != 1000 || res.Failover == 0 {
		t.Fatalf("result %+v", res)
	}
	var out bytes.Buffer
	res.Print(&out)
	for _, want := range []string{"entries taken by the leader", "append to signed checkpoint", "billing sweep over 1000 leases", "failover", "load average"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("table lacks %q:\n%s", want, out.String())
		}
	}
	t.Log("\n" + out.String())
}
