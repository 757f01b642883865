package market

import (
	"encoding/json"
	"errors"
	"math/big"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/virtuoso-market/virtuoso/node"
)

// ConfigAverage is the market's average asked price for one configuration (report §6.1.9,
// priceaverage): the median over the providers that can host it of what it costs at each (its
// cheapest machine that can), pro rata per hour of running and per day of storage so that
// different periods compare. A median over providers, not a mean over offers: one identity's
// many offers count once, and cannot pull the figure beyond the others' prices.
type ConfigAverage struct {
	Config         string    `json:"config"`
	RunningPerHour Money     `json:"running_per_hour"`
	StoragePerDay  Money     `json:"storage_per_day"`
	Providers      int       `json:"providers"` // providers averaged over in the last update
	Updated        time.Time `json:"updated"`   // when the values were last computed from offers
	// Stale is set when no provider could host the configuration at the last update: the
	// values are the last ones computed (zero if never).
	Stale bool `json:"stale,omitempty"`
}

// ResourceAverages are the average asked prices per resource, for providers deciding what to
// charge (report §5.2.5), in normalised units: the median over providers of each provider's
// median over its live offers.
type ResourceAverages struct {
	SpeedPer1000BogomipsHour Money     `json:"speed_per_1000_bogomips_hour"`
	MemoryPerGBHour          Money     `json:"memory_per_gb_hour"`
	StoragePerGBDay          Money     `json:"storage_per_gb_day"`
	Providers                int       `json:"providers"`
	Updated                  time.Time `json:"updated"`
}

// Sample is one point of a configuration's price history.
type Sample struct {
	Time           time.Time `json:"time"`
	RunningPerHour Money     `json:"running_per_hour"`
	StoragePerDay  Money     `json:"storage_per_day"`
	Providers      int       `json:"providers"`
}

// Averages is what /v1/market/averages answers.
type Averages struct {
	Configs   []ConfigAverage  `json:"configs"`
	Resources ResourceAverages `json:"resources"`
}

// averageConfig computes a configuration's average over offers; prev is the last value, kept
// (marked stale) when no offer can host the configuration.
func averageConfig(c Configuration, offers []Offer, prev ConfigAverage, now time.Time) ConfigAverage {
	type price struct{ run, store Money }
	cheapest := map[peer.ID]price{}
	for _, o := range offers {
		if !Hosts(o, c, c.Processor) {
			continue
		}
		q, err := o.Terms.Quote(c.Resources())
		if err != nil {
			continue
		}
		p := price{q.RunningPerHour(), q.StoragePerDay()}
		if old, ok := cheapest[o.Provider]; !ok || p.run+p.store < old.run+old.store {
			cheapest[o.Provider] = p
		}
	}
	if len(cheapest) == 0 {
		prev.Config, prev.Stale, prev.Providers = c.Name, true, 0
		return prev
	}
	var run, store []Money
	for _, p := range cheapest {
		run, store = append(run, p.run), append(store, p.store)
	}
	return ConfigAverage{Config: c.Name, RunningPerHour: median(run), StoragePerDay: median(store), Providers: len(cheapest), Updated: now}
}

// averageResources computes the per-resource averages over offers.
func averageResources(offers []Offer, prev ResourceAverages, now time.Time) ResourceAverages {
	type prices struct{ speed, mem, store []Money }
	per := map[peer.ID]*prices{}
	for _, o := range offers {
		t := o.Terms
		p := per[o.Provider]
		if p == nil {
			p = &prices{}
			per[o.Provider] = p
		}
		// price per chunk per period → per normalised amount per normalised period
		p.speed = append(p.speed, ratio(t.SpeedPrice, 1000*3600, t.SpeedUnit, t.RunningSecs))
		p.mem = append(p.mem, ratio(t.MemoryPrice, 1024*3600, t.MemoryUnit, t.RunningSecs))
		p.store = append(p.store, ratio(t.StoragePrice, 1024*86400, t.StorageUnit, t.StorageSecs))
	}
	if len(per) == 0 {
		prev.Providers = 0
		return prev
	}
	var speed, mem, store []Money
	for _, p := range per {
		speed, mem, store = append(speed, median(p.speed)), append(mem, median(p.mem)), append(store, median(p.store))
	}
	return ResourceAverages{SpeedPer1000BogomipsHour: median(speed), MemoryPerGBHour: median(mem),
		StoragePerGBDay: median(store), Providers: len(per), Updated: now}
}

// median is the middle amount (the mean of the two middle ones, for an even count).
func median(ms []Money) Money {
	s := slices.Clone(ms)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	}
	return mean(s[len(s)/2-1 : len(s)/2+1])
}

// mean is the average of amounts, rounded to the nearest micro-unit (halves up), summed in
// big integers so that many large prices cannot overflow.
func mean(ms []Money) Money {
	sum := new(big.Int)
	for _, m := range ms {
		sum.Add(sum, big.NewInt(int64(m)))
	}
	n := big.NewInt(int64(len(ms)))
	sum.Mul(sum, big.NewInt(2)).Add(sum, n)
	sum.Div(sum, n.Mul(n, big.NewInt(2)))
	return Money(sum.Int64())
}

// averageLoop computes the market averages now and every AverageInterval, when it also keeps
// a history sample (report §6.1.9 priceaverage). New offers are averaged in as they arrive,
// at most once a second, so a node that just joined does not show an empty market for a whole
// period.
func (b *Book) averageLoop() error {
	t := time.NewTicker(b.opts.AverageInterval)
	defer t.Stop()
	b.updateAverages(true)
	for {
		record := false
		select {
		case <-b.ctx.Done():
			return nil
		case <-t.C:
			record = true
		case <-b.booked:
			select { // let a burst of offers land first
			case <-b.ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
		b.updateAverages(record)
	}
}

// updateAverages computes every catalog configuration's average and the per-resource ones;
// with record, it appends the fresh values to the history.
func (b *Book) updateAverages(record bool) {
	now := b.now()
	offers := b.offers.Live(now)
	own, err := b.ownConfigs()
	if err != nil {
		b.log.Warn("averages", "err", err)
	}
	cat := catalog(own, offers, b.names())
	fresh := make(map[string]ConfigAverage, len(cat))
	b.mu.Lock()
	for _, c := range cat {
		fresh[c.Name] = averageConfig(c, offers, b.avgs[c.Name], now)
	}
	b.avgs = fresh
	b.resources = averageResources(offers, b.resources, now)
	b.mu.Unlock()
	if !record {
		return
	}
	// History is kept for the standard configurations and the owner's own, not for every name
	// an offer advertises: strangers' invented images must not fill this node's store.
	kept := slices.Concat(StandardConfigs(), own)
	for _, c := range kept {
		a, ok := fresh[c.Name]
		if !ok || a.Stale {
			continue
		}
		if err := b.appendSample(c.Name, Sample{Time: now, RunningPerHour: a.RunningPerHour, StoragePerDay: a.StoragePerDay, Providers: a.Providers}); err != nil {
			b.log.Warn("averages history", "config", c.Name, "err", err)
		}
	}
}

func (b *Book) appendSample(name string, smp Sample) error {
	return b.avgSpace.Update(func(tx *node.Txn) error {
		hist, err := node.GetJSON[[]Sample](tx, name)
		if err != nil && !errors.Is(err, node.ErrNotFound) {
			hist = nil // a corrupt history restarts
		}
		hist = append(hist, smp)
		if len(hist) > b.opts.History {
			hist = hist[len(hist)-b.opts.History:]
		}
		return node.PutJSON(tx, name, hist)
	})
}

// loadAverages starts from the last values of the persisted history, marked stale until the
// first update.
func (b *Book) loadAverages() {
	b.avgSpace.List(func(key string, val []byte) error {
		var hist []Sample
		if json.Unmarshal(val, &hist) == nil && len(hist) > 0 {
			last := hist[len(hist)-1]
			b.avgs[key] = ConfigAverage{Config: key, RunningPerHour: last.RunningPerHour, StoragePerDay: last.StoragePerDay,
				Updated: last.Time, Stale: true}
		}
		return nil
	})
}

// Averages returns the current market averages.
func (b *Book) Averages() (Averages, error) {
	own, err := b.ownConfigs()
	if err != nil {
		return Averages{}, err
	}
	cat := catalog(own, b.offers.Live(b.now()), b.names())
	b.mu.Lock()
	defer b.mu.Unlock()
	return Averages{Configs: sortConfigs(cat, b.avgs), Resources: b.resources}, nil
}

// History returns a configuration's price history, oldest first.
func (b *Book) History(config string) ([]Sample, error) {
	hist, err := node.GetJSON[[]Sample](b.avgSpace, config)
	if errors.Is(err, node.ErrNotFound) {
		return []Sample{}, nil
	}
	return hist, err
}
