package market

import (
	"fmt"

	"github.com/virtuoso-market/virtuoso/node"
)

// Quote is what a configuration costs under a provider's terms. Resources are sold in whole
// chunks: a configuration is charged ⌈amount / chunk⌉ chunks of each resource (300 MB of
// memory sold in 256 MB chunks is 2 chunks), so the price is exact and never rounded.
type Quote struct {
	SpeedChunks   int64 `json:"speed_chunks"`
	MemoryChunks  int64 `json:"memory_chunks"`
	StorageChunks int64 `json:"storage_chunks"`
	// RunningPrice is charged at the start of every running period while the VM runs:
	// SpeedChunks × SpeedPrice + MemoryChunks × MemoryPrice.
	RunningPrice Money `json:"running_price"`
	// StoragePrice is charged at the start of every storage period while the VM is stored:
	// StorageChunks × StoragePrice.
	StoragePrice Money `json:"storage_price"`
	RunningSecs  int64 `json:"running_period"`
	StorageSecs  int64 `json:"storage_period"`
}

// Quote prices resources r under the terms. It fails only when the amount overflows Money.
func (t Terms) Quote(r Resources) (Quote, error) {
	if err := t.Validate(); err != nil {
		return Quote{}, err
	}
	return t.quote(r)
}

// quote is Quote for terms already validated (those of decoded offers).
func (t Terms) quote(r Resources) (Quote, error) {
	q := Quote{
		SpeedChunks:   ceilDiv(r.SpeedBogomips, t.SpeedUnit),
		MemoryChunks:  ceilDiv(r.MemoryMB, t.MemoryUnit),
		StorageChunks: ceilDiv(r.StorageMB, t.StorageUnit),
		RunningSecs:   t.RunningSecs,
		StorageSecs:   t.StorageSecs,
	}
	speed, err := mulCount(t.SpeedPrice, q.SpeedChunks)
	if err != nil {
		return Quote{}, fmt.Errorf("running price: %w", err)
	}
	mem, err := mulCount(t.MemoryPrice, q.MemoryChunks)
	if err != nil {
		return Quote{}, fmt.Errorf("running price: %w", err)
	}
	if q.RunningPrice, err = addMoney(speed, mem); err != nil {
		return Quote{}, fmt.Errorf("running price: %w", err)
	}
	if q.StoragePrice, err = mulCount(t.StoragePrice, q.StorageChunks); err != nil {
		return Quote{}, fmt.Errorf("storage price: %w", err)
	}
	return q, nil
}

// Usage is a usage profile: how long a buyer expects to keep a VM and how much of each day it
// runs. Search ranks offers by what such a profile would cost.
type Usage struct {
	Days             int64 `json:"days"`                // stored for this many days
	RunSecondsPerDay int64 `json:"run_seconds_per_day"` // running this long each day
}

// DefaultUsage is a month, running eight hours a day.
func DefaultUsage() Usage { return Usage{Days: 30, RunSecondsPerDay: 8 * 3600} }

// Validate checks the profile.
func (u Usage) Validate() error {
	var p node.Problems
	if u.Days < 1 || u.Days > 3660 {
		p.Add("days", fmt.Sprintf("%d out of range 1..3660", u.Days))
	}
	if u.RunSecondsPerDay < 0 || u.RunSecondsPerDay > 24*3600 {
		p.Add("run_seconds_per_day", fmt.Sprintf("%ds out of range 0..86400", u.RunSecondsPerDay))
	}
	return p.Err(ErrInvalid, "usage")
}

// Cost is what a usage profile costs under a quote.
type Cost struct {
	StoragePeriods int64 `json:"storage_periods"`
	RunningPeriods int64 `json:"running_periods"`
	Storage        Money `json:"storage"`
	Running        Money `json:"running"`
	Total          Money `json:"total"`
}

// Cost charges the profile the way billing does (report §5.1, §6.1.9): storage at the start
// of every storage period over the whole stay, ⌈stay / storage period⌉ periods; running at the
// start of every running period of running time, where running time accumulates across stops
// and starts (a stop does not round off a slice), ⌈total running time / running period⌉
// periods.
func (q Quote) Cost(u Usage) (Cost, error) {
	if err := u.Validate(); err != nil {
		return Cost{}, err
	}
	c := Cost{
		StoragePeriods: ceilDiv(u.Days*86400, q.StorageSecs),
		RunningPeriods: ceilDiv(u.Days*u.RunSecondsPerDay, q.RunningSecs),
	}
	var err error
	if c.Storage, err = mulCount(q.StoragePrice, c.StoragePeriods); err != nil {
		return Cost{}, err
	}
	if c.Running, err = mulCount(q.RunningPrice, c.RunningPeriods); err != nil {
		return Cost{}, err
	}
	if c.Total, err = addMoney(c.Storage, c.Running); err != nil {
		return Cost{}, err
	}
	return c, nil
}

// RunningPerHour and StoragePerDay are a quote's prices pro rata per hour of running and per
// day of storage, so that offers with different periods compare. Guidance only: rounded to the
// nearest micro-unit, never charged.
func (q Quote) RunningPerHour() Money { return ratio(q.RunningPrice, 3600, q.RunningSecs) }

// StoragePerDay: see RunningPerHour.
func (q Quote) StoragePerDay() Money { return ratio(q.StoragePrice, 86400, q.StorageSecs) }
