package vm

import (
	"net/http"
	"strconv"

	"github.com/virtuoso-market/virtuoso/node"
)

// Routes adds the Manager's local API to a provider node's API: the provider tries its own
// hypervisor through it (`virtuoso vm --local …`), with no market or lease involved.
//
//	GET  /v1/vms                     every VM's record
//	POST /v1/vms                     CreateVM → the stored VM's record
//	GET  /v1/vms/{id}                one record
//	POST /v1/vms/{id}/{action}       an Action by name or verb (start, stop, suspend, resume,
//	                                 console, rm); resume?fresh=true boots from the disk when
//	                                 the saved state is unusable; console answers ConsoleAnswer
//
// Errors carry this package's codes (Code).
func (m *Manager) Routes(api *node.API) {
	api.Route("GET /v1/vms", func(*http.Request) (any, error) { return m.List(), nil })
	api.Route("POST /v1/vms", m.createRoute)
	api.Route("GET /v1/vms/{id}", func(r *http.Request) (any, error) {
		id, err := ParseID(r.PathValue("id"))
		if err != nil {
			return nil, HTTPError(err)
		}
		return answer(m.Get(id))
	})
	api.Route("POST /v1/vms/{id}/{action}", m.actRoute)
}

// CreateVM is the body of POST /v1/vms: a configuration to try on this provider. The node
// issues the VM's ID and MAC address.
type CreateVM struct {
	Name          string `json:"name"`
	SpeedBogomips int64  `json:"speed_bogomips"`
	MemoryMB      int64  `json:"memory_mb"`
	DiskMB        int64  `json:"disk_mb"`
	OS            string `json:"os"`
	Image         string `json:"image"`  // base disk image, under an allowed image dir
	Kernel        string `json:"kernel"` // boot this kernel directly, if set
	Initrd        string `json:"initrd"`
	Cmdline       string `json:"cmdline"`
}

// ConsoleAnswer is what POST /v1/vms/{id}/console answers.
type ConsoleAnswer struct {
	Record
	Console Console `json:"console"`
}

func (m *Manager) createRoute(r *http.Request) (any, error) {
	var req CreateVM
	if err := node.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	id := NewID()
	cfg := Config{ID: id, Name: req.Name, SpeedBogomips: req.SpeedBogomips, MemoryMB: req.MemoryMB,
		DiskMB: req.DiskMB, Processor: "x86_64", OS: req.OS, BaseImage: req.Image, MAC: MACFor(id)}
	if req.Kernel != "" {
		cfg.Boot = &KernelBoot{Kernel: req.Kernel, Initrd: req.Initrd, Cmdline: req.Cmdline}
	}
	return answer(m.Create(r.Context(), CreateRequest{Config: cfg}))
}

func (m *Manager) actRoute(r *http.Request) (any, error) {
	id, err := ParseID(r.PathValue("id"))
	if err != nil {
		return nil, HTTPError(err)
	}
	a, err := ParseAction(r.PathValue("action"))
	if err != nil {
		return nil, HTTPError(err)
	}
	fresh, _ := strconv.ParseBool(r.URL.Query().Get("fresh"))
	switch {
	case a == ActionView:
		rec, con, err := m.Console(r.Context(), id)
		if err != nil {
			return nil, HTTPError(err)
		}
		return ConsoleAnswer{Record: rec, Console: con}, nil
	case fresh && a == ActionResume:
		return answer(m.ResumeFresh(r.Context(), id))
	}
	return answer(m.Do(r.Context(), id, a))
}

// answer is a route's result: v, or err with its HTTP status and code.
func answer[T any](v T, err error) (any, error) {
	if err != nil {
		return nil, HTTPError(err)
	}
	return v, nil
}

// HTTPError marks err with the local API's status and code of the sentinel it matches.
func HTTPError(err error) error {
	code, status, ok := Code(err)
	if !ok {
		code, status = "internal", http.StatusInternalServerError
	}
	return node.WithCode(status, code, err)
}
