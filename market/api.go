package market

import (
	"net/http"
	"strconv"

	"github.com/virtuoso-market/virtuoso/node"
)

// routes adds the market's routes to the node's local API. Buyer routes are on every node;
// machine routes answer ErrNotProvider on a node that does not sell.
func (s *Service) routes(a *node.API) {
	wrap := func(fn func(r *http.Request) (any, error)) func(r *http.Request) (any, error) {
		return func(r *http.Request) (any, error) {
			out, err := fn(r)
			return out, httpStatus(err)
		}
	}
	a.Route("GET /v1/market/configs", wrap(func(*http.Request) (any, error) { return s.Configs() }))
	a.Route("POST /v1/market/configs", wrap(func(r *http.Request) (any, error) {
		var c Configuration
		if err := node.DecodeJSON(r, &c); err != nil {
			return nil, err
		}
		return s.AddConfig(c)
	}))
	a.Route("GET /v1/market/offers", wrap(func(*http.Request) (any, error) { return s.Offers(), nil }))
	a.Route("GET /v1/market/averages", wrap(func(*http.Request) (any, error) { return s.Averages() }))
	a.Route("GET /v1/market/averages/history", wrap(func(r *http.Request) (any, error) {
		return s.History(r.URL.Query().Get("config"))
	}))
	a.Route("POST /v1/market/search", wrap(func(r *http.Request) (any, error) {
		var q SearchQuery
		if err := node.DecodeJSON(r, &q); err != nil {
			return nil, err
		}
		out, err := s.Search(q)
		if out == nil && err == nil {
			out = []Match{}
		}
		return out, err
	}))
	a.Route("POST /v1/market/store", wrap(func(r *http.Request) (any, error) {
		var req StoreRequest
		if err := node.DecodeJSON(r, &req); err != nil {
			return nil, err
		}
		return s.Store(r.Context(), req)
	}))
	a.Route("GET /v1/market/vms", wrap(func(r *http.Request) (any, error) {
		refresh, _ := strconv.ParseBool(r.URL.Query().Get("refresh"))
		out, err := s.VMs(r.Context(), refresh)
		if out == nil && err == nil {
			out = []VM{}
		}
		return out, err
	}))
	a.Route("POST /v1/market/vms/{id}/{action}", wrap(func(r *http.Request) (any, error) {
		id, err := s.FindVM(r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		if r.PathValue("action") == ActConsole {
			return s.Console(r.Context(), id)
		}
		return s.Control(r.Context(), id, r.PathValue("action"))
	}))

	a.Route("GET /v1/market/machines", wrap(func(*http.Request) (any, error) {
		out, err := s.Machines()
		if out == nil && err == nil {
			out = []MachineView{}
		}
		return out, err
	}))
	a.Route("GET /v1/market/machines/defaults", wrap(func(r *http.Request) (any, error) { return s.HostDefaults(r.Context()) }))
	a.Route("POST /v1/market/machines", wrap(func(r *http.Request) (any, error) {
		var spec MachineSpec
		if err := node.DecodeJSON(r, &spec); err != nil {
			return nil, err
		}
		return s.AddMachine(r.Context(), spec)
	}))
	a.Route("POST /v1/market/machines/{id}", wrap(func(r *http.Request) (any, error) {
		id, err := ParseMachineID(r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		var e MachineEdit
		if err := node.DecodeJSON(r, &e); err != nil {
			return nil, err
		}
		return s.EditMachine(r.Context(), id, e)
	}))
	a.Route("DELETE /v1/market/machines/{id}", wrap(func(r *http.Request) (any, error) {
		id, err := ParseMachineID(r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		force, _ := strconv.ParseBool(r.URL.Query().Get("force"))
		if err := s.RemoveMachine(r.Context(), id, force); err != nil {
			return nil, err
		}
		return map[string]any{"removed": id}, nil
	}))
	a.Route("GET /v1/market/leases", wrap(func(*http.Request) (any, error) {
		out, err := s.ProviderLeases()
		if out == nil && err == nil {
			out = []ProviderLease{}
		}
		return out, err
	}))
}
