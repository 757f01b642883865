package market

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/testwait"
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

// chunkedPost posts size bytes of a JSON string as a body of unannounced length (chunked).
func chunkedPost(t *testing.T, n *node.Node, path string, size int) int {
	t.Helper()
	addr, err := n.Home().APIAddr()
	if err != nil {
		t.Fatal(err)
	}
	token, _ := n.Home().Token()
	body := io.MultiReader(strings.NewReader(`{"config_name":"`), strings.NewReader(strings.Repeat("x", size)), strings.NewReader(`"}`))
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// wantCode checks the code of an API error, what programs branch on.
func wantCode(t *testing.T, err error, status int, code string) {
	t.Helper()
	wantStatus(t, err, status)
	if he, _ := errors.AsType[*node.HTTPError](err); he.Code != code {
		t.Fatalf("err = %v with code %q, want %q", err, he.Code, code)
	}
}

// TestAPI drives the local API the CLI and the web UI use, on a provider and a buyer:
// machines, catalog, offers, search, averages and their history, and the errors (status and
// code) each side answers.
func TestAPI(t *testing.T) {
	nodes := marketCluster(t, 2, func(i int) *spec {
		if i == 0 {
			return seller(nil)
		}
		return fast()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pc, bc := apiClient(t, nodes[0].Node), apiClient(t, nodes[1].Node)

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
	wantCode(t, err, http.StatusConflict, "locked")
	// A value of the wrong type is a problem of its field, not a malformed body.
	err = pc.Post(ctx, "/v1/market/machines", map[string]any{"name": "x", "capacity": "lots"}, nil)
	wantCode(t, err, http.StatusBadRequest, "invalid")
	err = pc.Post(ctx, "/v1/market/machines", `{"name": "x"`, nil)
	wantCode(t, err, http.StatusBadRequest, "malformed")
	wantCode(t, bc.Get(ctx, "/v1/market/machines", nil), http.StatusForbidden, "not_provider")
	wantCode(t, bc.Do(ctx, http.MethodDelete, "/v1/market/machines/"+m.ID.String(), nil, nil), http.StatusForbidden, "not_provider")
	if err := pc.Do(ctx, http.MethodDelete, "/v1/market/machines/"+cp.ID.String(), nil, nil); err != nil {
		t.Fatal(err)
	}
	// Seeding is idempotent: the demo's machines are added once across restarts.
	demo1, err := nodes[0].prov.EnsureMachine(ctx, DemoMachine(1))
	if err != nil {
		t.Fatal(err)
	}
	if again, err := nodes[0].prov.EnsureMachine(ctx, DemoMachine(1)); err != nil || again.ID != demo1.ID {
		t.Fatalf("second seeding: %+v, %v; want machine %s again", again, err, demo1.ID)
	}
	if err := nodes[0].prov.RemoveMachine(ctx, demo1.ID, false); err != nil {
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
	wantCode(t, bc.Post(ctx, "/v1/market/configs", StandardConfigs()[0], nil), http.StatusConflict, "exists")
	wantCode(t, bc.Post(ctx, "/v1/market/configs", map[string]any{"name": "x", "memory_mb": -1}, nil), http.StatusBadRequest, "invalid")

	testwait.Eventually(t, 30*time.Second, func() error {
		var offers []Offer
		if err := bc.Get(ctx, "/v1/market/offers", &offers); err != nil || len(offers) != 1 {
			return fmt.Errorf("offers %+v, %v: the offer never reached the buyer", offers, err)
		}
		return nil
	})
	var matches []Match
	if err := bc.Post(ctx, "/v1/market/search", SearchQuery{ConfigName: "small-more-memory"}, &matches); err != nil || len(matches) != 1 {
		t.Fatalf("search %+v, %v", matches, err)
	}
	wantCode(t, bc.Post(ctx, "/v1/market/search", SearchQuery{ConfigName: "nope"}, nil), http.StatusNotFound, "not_found")
	// A body of unannounced length (chunked) over the API's cap is what an announced one is.
	if status := chunkedPost(t, nodes[1].Node, "/v1/market/search", 2<<20); status != http.StatusRequestEntityTooLarge {
		t.Fatalf("an oversized chunked body: %d, want 413", status)
	}
	wantCode(t, bc.Post(ctx, "/v1/market/search", SearchQuery{ConfigName: "tiny", SearchRequest: SearchRequest{Sort: "cheapest"}}, nil), http.StatusBadRequest, "invalid")

	// A store at prices the buyer did not see is refused before anything is sent; one on a
	// machine too small is refused by the buyer's own book. Nothing is kept either way.
	seen := Money(1)
	err = bc.Post(ctx, "/v1/market/store", StoreRequest{ConfigName: "tiny", Machine: m.ID, ExpectRunning: &seen}, nil)
	wantCode(t, err, http.StatusConflict, "stale")
	err = bc.Post(ctx, "/v1/market/store", StoreRequest{ConfigName: "tiny", Edit: ConfigEdit{MemoryMB: 1 << 20}, Machine: m.ID}, nil)
	wantCode(t, err, http.StatusConflict, "no_capacity")
	var vms []VM
	if err := bc.Get(ctx, "/v1/market/vms", &vms); err != nil || len(vms) != 0 {
		t.Fatalf("vms after a refused store: %+v, %v", vms, err)
	}
	wantCode(t, bc.Post(ctx, "/v1/market/vms/abcdef/start", nil, nil), http.StatusNotFound, "not_found")
	wantCode(t, bc.Post(ctx, "/v1/market/vms/abcdef/explode", nil, nil), http.StatusNotFound, "not_found")

	// Averages: the one provider's prices, then kept (stale) once it is gone.
	tiny := StandardConfigs()[0]
	q, _ := m.Terms.Quote(tiny.Resources())
	var avg Averages
	testwait.Eventually(t, 30*time.Second, func() error {
		avg = Averages{} // decode afresh: omitted fields must not keep old values
		if err := bc.Get(ctx, "/v1/market/averages", &avg); err != nil {
			return err
		}
		if i := slices.IndexFunc(avg.Configs, func(a ConfigAverage) bool { return a.Config == "tiny" }); i < 0 || avg.Configs[i].Providers != 1 {
			return fmt.Errorf("no average for tiny over 1 provider: %+v", avg.Configs)
		}
		return nil
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
	testwait.Eventually(t, 30*time.Second, func() error {
		if err := bc.Get(ctx, "/v1/market/averages/history?config=tiny", &hist); err != nil || len(hist) == 0 {
			return fmt.Errorf("no history sample for tiny (%v)", err)
		}
		return nil
	})
	if err := pc.Do(ctx, http.MethodDelete, "/v1/market/machines/"+m.ID.String(), nil, nil); err != nil {
		t.Fatal(err)
	}
	testwait.Eventually(t, 30*time.Second, func() error {
		avg = Averages{} // decode afresh: omitted fields must not keep old values
		if err := bc.Get(ctx, "/v1/market/averages", &avg); err != nil {
			return err
		}
		if i := slices.IndexFunc(avg.Configs, func(a ConfigAverage) bool { return a.Config == "tiny" }); i < 0 || !avg.Configs[i].Stale {
			return errors.New("tiny average not stale after the provider left")
		}
		return nil
	})
	if a := avg.Configs[slices.IndexFunc(avg.Configs, func(a ConfigAverage) bool { return a.Config == "tiny" })]; a.RunningPerHour != q.RunningPerHour() {
		t.Fatalf("stale average lost its value: %+v", a)
	}
	if err := bc.Get(ctx, "/v1/market/averages/history?config=tiny", &hist); err != nil || len(hist) == 0 {
		t.Fatalf("history %+v, %v", hist, err)
	}
}
