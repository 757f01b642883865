package market

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/node"
)

func apiClient(t *testing.T, n *node.Node) *node.Client {
	t.Helper()
	c, err := node.Dial(n.Home())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func wantStatus(t *testing.T, err error, status int) {
	t.Helper()
	he, ok := errors.AsType[*node.HTTPError](err)
	if !ok || he.Status != status {
		t.Fatalf("err = %v, want HTTP %d", err, status)
	}
}

// TestAPI drives the local API the CLI and the web UI use, on a provider without a
// hypervisor and a buyer: machines, catalog, offers, search, averages and their history,
// and the errors each side answers.
func TestAPI(t *testing.T) {
	nodes, svcs := marketCluster(t, 2, func(i int) *Options {
		o := fastOptions()
		o.Provider = i == 0
		return &o
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pc, bc := apiClient(t, nodes[0]), apiClient(t, nodes[1])

	var m Machine
	spec := testSpec("api-host", Resources{8000, 8192, 100000})
	if err := pc.Post(ctx, "/v1/market/machines", spec, &m); err != nil {
		t.Fatal(err)
	}
	var cp Machine
	if err := pc.Post(ctx, "/v1/market/machines", MachineSpec{CopyFrom: &m.ID, Name: "api-host-2"}, &cp); err != nil {
		t.Fatal(err)
	}
	if cp.Capacity != m.Capacity || cp.Terms != m.Terms || cp.ID == m.ID {
		t.Fatalf("copy %+v of %+v", cp, m)
	}
	err := pc.Post(ctx, "/v1/market/machines/"+m.ID.String(), MachineEdit{Capacity: &Resources{1, 1, 1}}, nil)
	wantStatus(t, err, http.StatusConflict)
	err = pc.Post(ctx, "/v1/market/machines", MachineSpec{Name: "no capacity"}, nil)
	wantStatus(t, err, http.StatusInternalServerError) // no hypervisor to measure the host with
	err = bc.Get(ctx, "/v1/market/machines", nil)
	wantStatus(t, err, http.StatusForbidden)
	if err := pc.Do(ctx, http.MethodDelete, "/v1/market/machines/"+cp.ID.String(), nil, nil); err != nil {
		t.Fatal(err)
	}
	// Seeding is idempotent: the demo's machines are added once across restarts.
	demo1, err := svcs[0].EnsureMachine(ctx, DemoMachine(1))
	if err != nil {
		t.Fatal(err)
	}
	if again, err := svcs[0].EnsureMachine(ctx, DemoMachine(1)); err != nil || again.ID != demo1.ID {
		t.Fatalf("second seeding: %+v, %v; want machine %s again", again, err, demo1.ID)
	}
	if err := svcs[0].RemoveMachine(ctx, demo1.ID, false); err != nil {
		t.Fatal(err)
	}
	var views []MachineView
	if err := pc.Get(ctx, "/v1/market/machines", &views); err != nil || len(views) != 1 || views[0].Free != m.Capacity {
		t.Fatalf("machines %+v, %v", views, err)
	}

	var cfgs []ConfigView
	if err := bc.Get(ctx, "/v1/market/configs", &cfgs); err != nil || len(cfgs) != len(StandardConfigs()) {
		t.Fatalf("configs %+v, %v", cfgs, err)
	}
	own := StandardConfigs()[1]
	own.Name, own.MemoryMB = "small-more-memory", 2048
	if err := bc.Post(ctx, "/v1/market/configs", own, nil); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, bc.Post(ctx, "/v1/market/configs", StandardConfigs()[0], nil), http.StatusConflict)
	wantStatus(t, bc.Post(ctx, "/v1/market/configs", map[string]any{"name": "x", "memory_mb": -1}, nil), http.StatusBadRequest)

	waitFor(t, 30*time.Second, func() string { return "offer never reached the buyer" }, func() bool {
		var offers []Offer
		return bc.Get(ctx, "/v1/market/offers", &offers) == nil && len(offers) == 1
	})
	var matches []Match
	if err := bc.Post(ctx, "/v1/market/search", SearchQuery{ConfigName: "small-more-memory"}, &matches); err != nil || len(matches) != 1 {
		t.Fatalf("search %+v, %v", matches, err)
	}
	wantStatus(t, bc.Post(ctx, "/v1/market/search", SearchQuery{ConfigName: "nope"}, nil), http.StatusNotFound)
	wantStatus(t, bc.Post(ctx, "/v1/market/search", SearchQuery{ConfigName: "tiny", SearchRequest: SearchRequest{Sort: "cheapest"}}, nil), http.StatusBadRequest)

	// The provider has no hypervisor: the store is refused and nothing is kept.
	err = bc.Post(ctx, "/v1/market/store", StoreRequest{ConfigName: "tiny", Machine: m.ID}, nil)
	wantStatus(t, err, http.StatusInternalServerError)
	if !strings.Contains(err.Error(), "cannot create vms") {
		t.Fatalf("store refusal does not say why: %v", err)
	}
	var vms []VM
	if err := bc.Get(ctx, "/v1/market/vms", &vms); err != nil || len(vms) != 0 {
		t.Fatalf("vms after a refused store: %+v, %v", vms, err)
	}
	wantStatus(t, bc.Post(ctx, "/v1/market/vms/abcdef/start", nil, nil), http.StatusNotFound)

	// Averages: the one provider's prices, then kept (stale) once it is gone.
	tiny := StandardConfigs()[0]
	q, _ := m.Terms.Quote(tiny.Resources())
	var avg Averages
	waitFor(t, 30*time.Second, func() string { return "no average for tiny" }, func() bool {
		avg = Averages{} // decode afresh: omitted fields must not keep old values
		if bc.Get(ctx, "/v1/market/averages", &avg) != nil {
			return false
		}
		i := slices.IndexFunc(avg.Configs, func(a ConfigAverage) bool { return a.Config == "tiny" })
		return i >= 0 && avg.Configs[i].Providers == 1
	})
	i := slices.IndexFunc(avg.Configs, func(a ConfigAverage) bool { return a.Config == "tiny" })
	if a := avg.Configs[i]; a.RunningPerHour != q.RunningPerHour() || a.StoragePerDay != q.StoragePerDay() || a.Stale {
		t.Fatalf("tiny average %+v, want %v/h %v/day", a, q.RunningPerHour(), q.StoragePerDay())
	}
	if avg.Resources.Providers != 1 {
		t.Fatalf("resource averages %+v", avg.Resources)
	}
	// The history takes a sample every averaging period while a provider can host tiny.
	var hist []Sample
	waitFor(t, 30*time.Second, func() string { return "no history sample for tiny" }, func() bool {
		return bc.Get(ctx, "/v1/market/averages/history?config=tiny", &hist) == nil && len(hist) > 0
	})
	if err := pc.Do(ctx, http.MethodDelete, "/v1/market/machines/"+m.ID.String(), nil, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() string { return "tiny average not stale after the provider left" }, func() bool {
		avg = Averages{} // decode afresh: omitted fields must not keep old values
		if bc.Get(ctx, "/v1/market/averages", &avg) != nil {
			return false
		}
		i := slices.IndexFunc(avg.Configs, func(a ConfigAverage) bool { return a.Config == "tiny" })
		return i >= 0 && avg.Configs[i].Stale
	})
	if a := avg.Configs[slices.IndexFunc(avg.Configs, func(a ConfigAverage) bool { return a.Config == "tiny" })]; a.RunningPerHour != q.RunningPerHour() {
		t.Fatalf("stale average lost its value: %+v", a)
	}
	if err := bc.Get(ctx, "/v1/market/averages/history?config=tiny", &hist); err != nil || len(hist) == 0 {
		t.Fatalf("history %+v, %v", hist, err)
	}
}
