package market

import (
	"context"
	"fmt"
	"net/http"
	"strconv"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// The local API routes of the three services. Errors carry the codes of this package and of
// package vm (see codes).

// route adds a JSON route whose errors are marked with their status and code.
func route(a *node.API, pattern string, fn func(r *http.Request) (any, error)) {
	a.Route(pattern, func(r *http.Request) (any, error) {
		out, err := fn(r)
		return out, httpError(err)
	})
}

// nonNil answers an empty list as [] rather than null.
func nonNil[T any](out []T, err error) (any, error) {
	if out == nil && err == nil {
		out = []T{}
	}
	return out, err
}

func decoded[T any](r *http.Request, fn func(T) (any, error)) (any, error) {
	var v T
	if err := node.DecodeJSON(r, &v); err != nil {
		return nil, err
	}
	return fn(v)
}

func (b *Book) routes(a *node.API) {
	route(a, "GET /v1/market/configs", func(*http.Request) (any, error) { return b.Configs() })
	route(a, "POST /v1/market/configs", func(r *http.Request) (any, error) {
		return decoded(r, func(c Configuration) (any, error) { return b.AddConfig(c) })
	})
	route(a, "GET /v1/market/offers", func(*http.Request) (any, error) { return b.Offers(), nil })
	route(a, "GET /v1/market/averages", func(*http.Request) (any, error) { return b.Averages() })
	route(a, "GET /v1/market/averages/history", func(r *http.Request) (any, error) {
		return b.History(r.URL.Query().Get("config"))
	})
	route(a, "POST /v1/market/search", func(r *http.Request) (any, error) {
		return decoded(r, func(q SearchQuery) (any, error) { return nonNil(b.Search(q)) })
	})
}

func (b *Buyer) routes(a *node.API) {
	route(a, "POST /v1/market/store", func(r *http.Request) (any, error) {
		return decoded(r, func(req StoreRequest) (any, error) { return b.Store(r.Context(), req) })
	})
	route(a, "GET /v1/market/vms", func(r *http.Request) (any, error) {
		refresh, _ := strconv.ParseBool(r.URL.Query().Get("refresh"))
		return nonNil(b.VMs(r.Context(), refresh))
	})
	route(a, "GET /v1/market/vms/{id}", func(r *http.Request) (any, error) {
		id, err := b.FindVM(r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		return b.Status(r.Context(), id)
	})
	// GET /v1/market/vms/{id}/destinations?days=N&hours=H: where the VM can move, and what
	// the profile costs there.
	route(a, "GET /v1/market/vms/{id}/destinations", func(r *http.Request) (any, error) {
		id, err := b.FindVM(r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		var u Usage
		if s := r.URL.Query().Get("days"); s != "" {
			if u.Days, err = strconv.ParseInt(s, 10, 64); err != nil {
				return nil, fmt.Errorf("%w: days %q", ErrInvalid, s)
			}
			u.RunSecondsPerDay = DefaultUsage().RunSecondsPerDay
		}
		if s := r.URL.Query().Get("hours"); s != "" {
			h, err := strconv.ParseFloat(s, 64)
			if err != nil || h < 0 || h > 24 {
				return nil, fmt.Errorf("%w: hours %q: 0 to 24", ErrInvalid, s)
			}
			u.RunSecondsPerDay = int64(h * 3600)
			if u.Days == 0 {
				u.Days = DefaultUsage().Days
			}
		}
		return b.Destinations(id, u)
	})
	route(a, "GET /v1/market/migrations", func(r *http.Request) (any, error) {
		return nonNil(b.Migrations())
	})
	route(a, "GET /v1/market/migrations/{id}", func(r *http.Request) (any, error) {
		id, err := b.FindVM(r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		return b.MigrationOf(id)
	})
	// POST /v1/market/vms/{id}/{action}: an action by name or verb (start, stop, suspend,
	// resume, console, rm); resume?fresh=true boots from the disk; console answers a
	// ConsoleSession; migrate takes a MigrateRequest and moves the VM.
	route(a, "POST /v1/market/vms/{id}/{action}", func(r *http.Request) (any, error) {
		id, err := b.FindVM(r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		act, err := vm.ParseAction(r.PathValue("action"))
		if err != nil {
			return nil, err
		}
		fresh, _ := strconv.ParseBool(r.URL.Query().Get("fresh"))
		switch {
		case act == vm.ActionMigrate:
			return decoded(r, func(req MigrateRequest) (any, error) { return b.Migrate(r.Context(), id, req) })
		case act == vm.ActionView:
			return b.Console(r.Context(), id)
		case fresh && act == vm.ActionResume:
			return b.ResumeFresh(r.Context(), id)
		case fresh:
			return nil, fmt.Errorf("%w: fresh is for resume only", ErrInvalid)
		}
		return b.Control(r.Context(), id, act)
	})
}

func (p *Provider) routes(a *node.API) {
	route(a, "GET /v1/market/machines", func(*http.Request) (any, error) { return nonNil(p.Machines()) })
	route(a, "GET /v1/market/machines/defaults", func(r *http.Request) (any, error) { return p.HostDefaults(r.Context()) })
	route(a, "POST /v1/market/machines", func(r *http.Request) (any, error) {
		return decoded(r, func(spec MachineSpec) (any, error) { return p.AddMachine(r.Context(), spec) })
	})
	route(a, "POST /v1/market/machines/{id}", func(r *http.Request) (any, error) {
		id, err := ParseMachineID(r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		return decoded(r, func(e MachineEdit) (any, error) { return p.EditMachine(r.Context(), id, e) })
	})
	// DELETE, or POST .../delete for the web UI, which changes state by POST only;
	// ?force=true removes a machine that still stores VMs.
	remove := func(r *http.Request) (any, error) {
		id, err := ParseMachineID(r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		force, _ := strconv.ParseBool(r.URL.Query().Get("force"))
		if err := p.RemoveMachine(r.Context(), id, force); err != nil {
			return nil, err
		}
		return map[string]any{"removed": id}, nil
	}
	route(a, "DELETE /v1/market/machines/{id}", remove)
	route(a, "POST /v1/market/machines/{id}/delete", remove)
	route(a, "GET /v1/market/leases", func(*http.Request) (any, error) { return nonNil(p.ProviderLeases()) })
}

// NotSelling is the service a node that does not sell runs in the Provider's place: it
// answers the Provider's routes with ErrNotProvider, so that a buyer asking for its machines
// learns why there are none.
type NotSelling struct{}

// Start implements node.Service.
func (NotSelling) Start(_ context.Context, n *node.Node) error {
	refuse := func(*http.Request) (any, error) {
		return nil, fmt.Errorf("%w: start the node with --provider (roles.provider in config.toml) to sell machines", ErrNotProvider)
	}
	for _, pattern := range []string{"/v1/market/machines", "/v1/market/machines/", "/v1/market/leases"} {
		route(n.API(), pattern, refuse)
	}
	return nil
}

// Close implements node.Service.
func (NotSelling) Close() error { return nil }
