package vsphere

import (
	"context"
	"errors"
	"testing"

	"github.com/virtuoso-market/virtuoso/vm"
)

func TestConsole(t *testing.T) {
	s := startSim(t, false)
	d, _ := newDriver(t, s, func(c *Config) { c.ConsolePorts = [2]int{5900, 5901} })
	ctx := context.Background()
	a, b, c := startedVM(t, d), startedVM(t, d), startedVM(t, d)

	ca, err := d.OpenConsole(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if ca.Addr != "127.0.0.1:5900" || len(ca.Password) != 8 {
		t.Fatalf("console %+v, want 127.0.0.1:5900 with an 8-character password", ca)
	}
	ec := extraConfig(vmProps(t, d, a.ID, "config.extraConfig").Config.ExtraConfig)
	if ec[keyVNCEnabled] != "true" || ec[keyVNCPort] != "5900" || ec[keyVNCPassword] != ca.Password {
		t.Fatalf("vnc settings %v", ec)
	}

	// Reopening keeps the port and changes the password.
	again, err := d.OpenConsole(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if again.Addr != ca.Addr || again.Password == ca.Password {
		t.Fatalf("reopened %+v after %+v: want the same port and a new password", again, ca)
	}

	cb, err := d.OpenConsole(ctx, b.ID)
	if err != nil || cb.Addr != "127.0.0.1:5901" {
		t.Fatalf("second console %+v, %v", cb, err)
	}
	if _, err := d.OpenConsole(ctx, c.ID); !errors.Is(err, vm.ErrConsoleBusy) {
		t.Fatalf("third console: %v, want ErrConsoleBusy", err)
	}

	if err := d.CloseConsole(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	ec = extraConfig(vmProps(t, d, a.ID, "config.extraConfig").Config.ExtraConfig)
	if ec[keyVNCEnabled] != "false" || ec[keyVNCPassword] != "" {
		t.Fatalf("vnc settings after close %v", ec)
	}
	if err := d.CloseConsole(ctx, a.ID); err != nil {
		t.Fatalf("closing a closed console: %v", err)
	}
	cc, err := d.OpenConsole(ctx, c.ID)
	if err != nil || cc.Addr != "127.0.0.1:5900" {
		t.Fatalf("console after one closed %+v, %v; want the freed port 5900", cc, err)
	}

	// Suspending ends the session and frees the port too; the password does not survive.
	if err := d.Suspend(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	ec = extraConfig(vmProps(t, d, b.ID, "config.extraConfig").Config.ExtraConfig)
	if ec[keyVNCEnabled] != "false" || ec[keyVNCPassword] != "" {
		t.Fatalf("vnc settings after suspend %v", ec)
	}
	if ca, err = d.OpenConsole(ctx, a.ID); err != nil || ca.Addr != "127.0.0.1:5901" {
		t.Fatalf("console after a suspend %+v, %v; want port 5901", ca, err)
	}
}

func TestWebMKS(t *testing.T) {
	s := startSim(t, false)
	d, _ := newDriver(t, s, nil)
	ctx := context.Background()
	cfg := startedVM(t, d)
	if _, err := d.WebMKS(ctx, cfg.ID); !errors.Is(err, vm.ErrHypervisor) {
		t.Fatalf("WebMKS on vcsim, which lacks AcquireTicket: %v, want ErrHypervisor", err)
	}
	s.model.Map().Put(&ticketVM{s.vm(t, d, cfg.ID)})
	ticket, err := d.WebMKS(ctx, cfg.ID)
	if err != nil {
		t.Fatal(err)
	}
	if ticket.URL != "wss://esx1.example:443/ticket/52a3b4c5" || ticket.SSLThumbprint != "AB:CD" {
		t.Fatalf("ticket %+v", ticket)
	}
	if err := d.Stop(ctx, cfg.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WebMKS(ctx, cfg.ID); !errors.Is(err, vm.ErrNotRunning) {
		t.Fatalf("WebMKS of a stopped VM: %v, want ErrNotRunning", err)
	}
}
