package market

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// profileOffer is an offer of provider p with the given prices per chunk (speed and memory
// share one price here) and the default chunks and periods.
func profileOffer(p peer.ID, name string, running, storage Money, free Resources) Offer {
	t := testTerms()
	t.SpeedPrice, t.MemoryPrice, t.StoragePrice = running, running, storage
	return Offer{Provider: p, Machine: MachineID{byte(len(name)), name[0]}, Seq: 1, Name: name, Processor: "x86_64",
		NetworkMbps: 1000, Methods: DefaultMethods(), Capacity: Resources{100000, 100000, 1000000}, Free: free, Terms: t,
		Issued: goldenTime, Expires: goldenTime.Add(time.Hour)}
}

func TestSearchRanksByProfile(t *testing.T) {
	_, p1 := testKey(t, 1)
	_, p2 := testKey(t, 2)
	_, p3 := testKey(t, 3)
	big := Resources{100000, 100000, 1000000}
	// The report's two kinds of provider: one cheap to store, one cheap to run.
	cheapStore := profileOffer(p1, "cheap-store", 50_000, 100, big)
	cheapRun := profileOffer(p2, "cheap-run", 100, 50_000, big)
	full := profileOffer(p3, "full", 1, 1, Resources{100, 100, 100})
	offers := []Offer{cheapStore, cheapRun, full}
	cfg := StandardConfigs()[1] // small: 2000 bogomips, 1024 MB, 10240 MB

	for _, tc := range []struct {
		name  string
		req   SearchRequest
		first string
		n     int
	}{
		{"storage cost", SearchRequest{Config: cfg, Sort: SortStorage}, "cheap-store", 2},
		{"running cost", SearchRequest{Config: cfg, Sort: SortRunning}, "cheap-run", 2},
		// Stored a year, running a minute a day: storage dominates.
		{"total, mostly stored", SearchRequest{Config: cfg, Usage: Usage{Days: 365, RunSecondsPerDay: 60}}, "cheap-store", 2},
		// Running all day: running dominates.
		{"total, always running", SearchRequest{Config: cfg, Usage: Usage{Days: 30, RunSecondsPerDay: 86400}}, "cheap-run", 2},
		{"max total filters", SearchRequest{Config: cfg, Usage: Usage{Days: 30, RunSecondsPerDay: 86400}, MaxTotal: 1}, "", 0},
		{"processor filter", SearchRequest{Config: cfg, Processor: "aarch64"}, "", 0},
		{"network filter", SearchRequest{Config: cfg, MinNetworkMbps: 10000}, "", 0},
		{"method filter", SearchRequest{Config: cfg, Methods: []string{"teleport"}}, "", 0},
		{"limit", SearchRequest{Config: cfg, Limit: 1}, "cheap-run", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Search(offers, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tc.n {
				t.Fatalf("%d matches, want %d: %+v", len(got), tc.n, got)
			}
			if tc.n > 0 && got[0].Name != tc.first {
				t.Fatalf("first is %s, want %s", got[0].Name, tc.first)
			}
		})
	}
}

func TestSearchPricesExactly(t *testing.T) {
	_, p := testKey(t, 1)
	o := profileOffer(p, "m", 0, 0, Resources{100000, 100000, 1000000})
	o.Terms = Terms{SpeedUnit: 1000, MemoryUnit: 512, StorageUnit: 4096, SpeedPrice: 3, MemoryPrice: 7, StoragePrice: 11,
		RunningSecs: 600, StorageSecs: 86400}
	cfg := Configuration{Name: "odd", Processor: "x86_64", SpeedBogomips: 2500, MemoryMB: 513, DiskMB: 4097}
	got, err := Search([]Offer{o}, SearchRequest{Config: cfg, Usage: Usage{Days: 2, RunSecondsPerDay: 3600}})
	if err != nil || len(got) != 1 {
		t.Fatalf("%v, %v", got, err)
	}
	m := got[0]
	// ⌈2500/1000⌉=3 speed chunks, ⌈513/512⌉=2 memory chunks, ⌈4097/4096⌉=2 storage chunks.
	if m.Quote.RunningPrice != 3*3+2*7 || m.Quote.StoragePrice != 2*11 {
		t.Fatalf("quote %+v", m.Quote)
	}
	// 2 h of running in 10-minute periods: 12; 2 days of storage in daily periods: 2.
	if m.Cost.Running != 12*23 || m.Cost.Storage != 2*22 || m.Cost.Total != 12*23+2*22 {
		t.Fatalf("cost %+v", m.Cost)
	}
}

func TestSearchNeedsTheImage(t *testing.T) {
	_, p := testKey(t, 1)
	o := profileOffer(p, "m", 1, 1, Resources{100000, 100000, 1000000})
	img := ImageInfo{Hash: "blake3:" + string(make64('a')), Name: "busybox", OS: "linux", SizeMB: 32, MemoryMB: 128}
	cfg := img.configuration()
	if got, _ := Search([]Offer{o}, SearchRequest{Config: cfg}); len(got) != 0 {
		t.Fatal("an offer without the image matched a preconfigured configuration")
	}
	o.Images = []ImageInfo{img}
	if got, _ := Search([]Offer{o}, SearchRequest{Config: cfg}); len(got) != 1 {
		t.Fatal("the offer with the image did not match")
	}
}

func make64(c byte) []byte {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return b
}

func TestAverages(t *testing.T) {
	_, p1 := testKey(t, 1)
	_, p2 := testKey(t, 2)
	big := Resources{100000, 100000, 1000000}
	a := profileOffer(p1, "a", 1_000, 10_000, big)
	b := profileOffer(p2, "b", 3_000, 20_000, big)
	tiny := StandardConfigs()[0] // 1000 bogomips (2 chunks), 256 MB (1 chunk), 1024 MB (1 chunk)
	now := goldenTime

	avg := averageConfig(tiny, []Offer{a, b}, ConfigAverage{}, now)
	// a: running 2×1000+1×1000 = 3000/h, storage 10000/day; b: 9000/h, 20000/day.
	if avg.RunningPerHour != 6_000 || avg.StoragePerDay != 15_000 || avg.Providers != 2 || avg.Stale {
		t.Fatalf("average %+v", avg)
	}
	huge := Configuration{Name: "huge", Processor: "x86_64", SpeedBogomips: 1 << 30, MemoryMB: 1024, DiskMB: 1024}
	stale := averageConfig(huge, []Offer{a, b}, ConfigAverage{Config: "huge", RunningPerHour: 42, Updated: now}, now.Add(time.Minute))
	if !stale.Stale || stale.RunningPerHour != 42 || stale.Providers != 0 {
		t.Fatalf("no provider fits: %+v, want the stale value kept", stale)
	}
	res := averageResources([]Offer{a, b}, ResourceAverages{}, now)
	// speed: 1000 per 500 bogomips per hour → 2000 per 1000 bogomips·h; b: 6000. Mean 4000.
	// memory: 1000 per 256 MB·h → 4000 per GB·h; b 12000 → 8000.
	// storage: 10000 per GB·day; b 20000 → 15000.
	if res.SpeedPer1000BogomipsHour != 4_000 || res.MemoryPerGBHour != 8_000 || res.StoragePerGBDay != 15_000 || res.Providers != 2 {
		t.Fatalf("resource averages %+v", res)
	}
}
