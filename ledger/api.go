package ledger

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
)

// Payment is the body of POST /v1/ledger/deposit (on a coordinator) and
// POST /v1/ledger/transfer.
type Payment struct {
	To     string       `json:"to"`
	Amount market.Money `json:"amount"`
	Memo   string       `json:"memo,omitempty"`
}

func (d Payment) body() (peer.ID, *TransferBody, error) {
	to, err := peer.Decode(d.To)
	if err != nil {
		return "", nil, node.WithCode(http.StatusBadRequest, "invalid_id", fmt.Errorf("pay %q: not a peer id", d.To))
	}
	if err := checkPayment(to, d.Amount, d.Memo); err != nil {
		return "", nil, node.WithCode(http.StatusBadRequest, "invalid", err)
	}
	return to, &TransferBody{To: to, Amount: d.Amount, Memo: d.Memo}, nil
}

// pay appends a deposit or transfer, pushes it and answers with the account of show.
func (m *Mirror) pay(ctx context.Context, show peer.ID, t Type, b Body) (any, error) {
	s, err := m.own.Append(time.Now(), t, b)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := m.push(ctx); err != nil {
		return nil, unreachable(err)
	}
	a, err := m.request(ctx, mirrorRequest{Note: s.Seq})
	if err != nil {
		return nil, unreachable(err)
	}
	if a.Note == nil || a.Note.Outcome != Applied {
		why := "the coordinator did not say"
		if a.Note != nil {
			why = a.Note.Message
		}
		return nil, node.WithCode(http.StatusConflict, "refused", fmt.Errorf("%s refused: %s", t, why))
	}
	return m.account(ctx, show)
}

// Account is the answer of GET /v1/ledger/account[/{peer}]: the ledger's view with the
// node's latest checkpoint (for its own account) and any evidence against coordinators.
type AccountAnswer struct {
	View       View        `json:"view"`
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
	Evidence   []Evidence  `json:"evidence,omitempty"`
	Pending    uint64      `json:"pending"` // own entries not yet taken by the coordinator
}

// routes serves the ledger on the node's local API.
func (m *Mirror) routes(api *node.API) {
	api.Route("GET /v1/ledger/account", func(r *http.Request) (any, error) { return m.account(r.Context(), "") })
	api.Route("GET /v1/ledger/account/{peer}", func(r *http.Request) (any, error) {
		p, err := peer.Decode(r.PathValue("peer"))
		if err != nil {
			return nil, node.WithCode(http.StatusBadRequest, "invalid_id", fmt.Errorf("%q is not a peer id", r.PathValue("peer")))
		}
		return m.account(r.Context(), p)
	})
	api.Route("GET /v1/ledger/status", func(r *http.Request) (any, error) {
		ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
		defer cancel()
		st, err := m.Status(ctx)
		if err != nil {
			return nil, unreachable(err)
		}
		return st, nil
	})
	api.Route("GET /v1/ledger/proofs", func(*http.Request) (any, error) {
		if m.opts.Local == nil {
			return nil, notCoordinator()
		}
		return m.opts.Local.State().Proofs()
	})
	api.Route("POST /v1/ledger/deposit", func(r *http.Request) (any, error) {
		var d Payment
		if err := node.DecodeJSON(r, &d); err != nil {
			return nil, err
		}
		if m.opts.Local == nil {
			return nil, notCoordinator()
		}
		to, body, err := d.body()
		if err != nil {
			return nil, err
		}
		return m.pay(r.Context(), to, TypeDeposit, &DepositBody{To: to, Amount: body.Amount, Memo: body.Memo})
	})
	api.Route("POST /v1/ledger/transfer", func(r *http.Request) (any, error) {
		var d Payment
		if err := node.DecodeJSON(r, &d); err != nil {
			return nil, err
		}
		to, body, err := d.body()
		if err != nil {
			return nil, err
		}
		if to == m.n.ID() {
			return nil, node.WithCode(http.StatusBadRequest, "invalid", errors.New("a transfer to this node itself"))
		}
		return m.pay(r.Context(), m.n.ID(), TypeTransfer, body)
	})
	api.Route("POST /v1/ledger/leave", func(r *http.Request) (any, error) {
		if m.opts.Local == nil {
			return nil, notCoordinator()
		}
		ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
		defer cancel()
		a, err := m.request(ctx, mirrorRequest{Leave: true})
		if err != nil {
			return nil, unreachable(err)
		}
		return a.Status, nil
	})
	api.Route("POST /v1/ledger/join", func(r *http.Request) (any, error) {
		var req struct {
			Addr string `json:"addr"`
		}
		if err := node.DecodeJSON(r, &req); err != nil {
			return nil, err
		}
		ai, err := node.ParseBootstrap(req.Addr, false)
		if err != nil {
			return nil, node.WithCode(http.StatusBadRequest, "invalid", err)
		}
		ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
		defer cancel()
		if err := m.Join(ctx, ai); err != nil {
			return nil, unreachable(err)
		}
		return m.Status(ctx)
	})
}

func (m *Mirror) account(ctx context.Context, p peer.ID) (AccountAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var a AccountAnswer
	var err error
	if p == "" || p == m.n.ID() {
		if a.View, err = m.Sync(ctx); err != nil {
			return a, unreachable(err)
		}
		if cp, ok, _ := m.cps.Latest(); ok {
			a.Checkpoint = &cp
		}
		a.Evidence, _ = m.cps.Evidence()
		a.Pending = m.own.Last() - m.own.Acked()
		return a, nil
	}
	if a.View, err = m.View(ctx, p); err != nil {
		return a, unreachable(err)
	}
	return a, nil
}

func notCoordinator() error {
	return node.WithCode(http.StatusForbidden, "not_coordinator", errors.New("this node is not a coordinator: only a coordinator's operator deposits (run the node with --coordinator)"))
}

func unreachable(err error) error {
	return node.WithCode(http.StatusBadGateway, "coordinator_unreachable", fmt.Errorf("the ledger's coordinators: %w", err))
}
