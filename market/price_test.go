package market

import (
	"testing"
)

func testTerms() Terms {
	return Terms{SpeedUnit: 500, MemoryUnit: 256, StorageUnit: 1024,
		SpeedPrice: 2_000, MemoryPrice: 1_000, StoragePrice: 5_000, RunningSecs: 3600, StorageSecs: 86400}
}

func TestQuoteChargesWholeChunks(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Resources
		want Quote
	}{
		{"exact chunks", Resources{1000, 512, 2048},
			Quote{SpeedChunks: 2, MemoryChunks: 2, StorageChunks: 2, RunningPrice: 2*2_000 + 2*1_000, StoragePrice: 2 * 5_000}},
		{"one over rounds up", Resources{1001, 257, 1025},
			Quote{SpeedChunks: 3, MemoryChunks: 2, StorageChunks: 2, RunningPrice: 3*2_000 + 2*1_000, StoragePrice: 2 * 5_000}},
		{"zero speed", Resources{0, 1, 1},
			Quote{SpeedChunks: 0, MemoryChunks: 1, StorageChunks: 1, RunningPrice: 1_000, StoragePrice: 5_000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, err := testTerms().Quote(tc.r)
			if err != nil {
				t.Fatal(err)
			}
			tc.want.RunningSecs, tc.want.StorageSecs = 3600, 86400
			if q != tc.want {
				t.Fatalf("Quote(%v) = %+v, want %+v", tc.r, q, tc.want)
			}
		})
	}
}

func TestCostOfUsageProfile(t *testing.T) {
	q := Quote{RunningPrice: 10_000, StoragePrice: 70_000, RunningSecs: 3600, StorageSecs: 7 * 86400}
	for _, tc := range []struct {
		name string
		u    Usage
		want Cost
	}{
		// 30 days of storage in 7-day periods: 5 periods (charged at the start of each).
		// 8 h a day for 30 days = 240 hours = 240 running periods.
		{"month eight hours a day", Usage{Days: 30, RunSecondsPerDay: 8 * 3600},
			Cost{StoragePeriods: 5, RunningPeriods: 240, Storage: 350_000, Running: 2_400_000, Total: 2_750_000}},
		// 10 minutes a day for 7 days is 70 minutes of running time: 2 hourly periods, not 7.
		{"running time accumulates", Usage{Days: 7, RunSecondsPerDay: 600},
			Cost{StoragePeriods: 1, RunningPeriods: 2, Storage: 70_000, Running: 20_000, Total: 90_000}},
		{"never running", Usage{Days: 1, RunSecondsPerDay: 0},
			Cost{StoragePeriods: 1, RunningPeriods: 0, Storage: 70_000, Running: 0, Total: 70_000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := q.Cost(tc.u)
			if err != nil {
				t.Fatal(err)
			}
			if c != tc.want {
				t.Fatalf("Cost(%+v) = %+v, want %+v", tc.u, c, tc.want)
			}
		})
	}
}

func TestTermsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Terms)
		ok   bool
	}{
		{"defaults", func(*Terms) {}, true},
		{"zero chunk", func(t *Terms) { t.MemoryUnit = 0 }, false},
		{"negative price", func(t *Terms) { t.SpeedPrice = -1 }, false},
		{"price over cap", func(t *Terms) { t.StoragePrice = MaxPrice + 1 }, false},
		{"zero period", func(t *Terms) { t.RunningSecs = 0 }, false},
		{"period over a year", func(t *Terms) { t.StorageSecs = MaxPeriod + 1 }, false},
		{"free", func(t *Terms) { t.SpeedPrice, t.MemoryPrice, t.StoragePrice = 0, 0, 0 }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			terms := testTerms()
			tc.edit(&terms)
			if err := terms.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestProRata(t *testing.T) {
	q := Quote{RunningPrice: 1_000_001, StoragePrice: 7, RunningSecs: 7200, StorageSecs: 2 * 86400}
	// 1.000001 per 2 h → 0.5000005 per hour → rounds half up to 0.500001.
	if got := q.RunningPerHour(); got != 500_001 {
		t.Fatalf("RunningPerHour = %d", got)
	}
	// 7 micro per 2 days → 3.5 per day → 4.
	if got := q.StoragePerDay(); got != 4 {
		t.Fatalf("StoragePerDay = %d", got)
	}
}
