package bench

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestMarketSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := MarketOptions{Dir: t.TempDir(), Nodes: 4, Rounds: 3, Offers: 300, Searches: 20}
	res, err := RunMarket(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Propagation)+res.Lost != 3*3 || len(res.Propagation) == 0 || len(res.Search) != 20 {
		t.Fatalf("samples: %d propagation, %d search", len(res.Propagation), len(res.Search))
	}
	if len(res.HostilePropagation)+res.HostileLost != 3*3 || len(res.HostileBookSearch) != 20 || res.Flooded == 0 {
		t.Fatalf("hostile samples: %d propagation, %d searches, %d offers flooded", len(res.HostilePropagation), len(res.HostileBookSearch), res.Flooded)
	}
	if res.FlooderHeld > 64 {
		t.Fatalf("the searched book holds %d of the flooder's offers, over its bound", res.FlooderHeld)
	}
	if res.CatchupOffers < 300 {
		t.Fatalf("the joining node caught up %d of 300 offers", res.CatchupOffers)
	}
	var out bytes.Buffer
	res.Print(&out, opts)
	for _, want := range []string{"offer propagation", "while one identity floods", "one identity flooding", "search over 300 offers", "catch-up"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("table lacks %q:\n%s", want, out.String())
		}
	}
	t.Log("\n" + out.String())
}
