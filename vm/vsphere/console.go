package vsphere

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"strconv"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/virtuoso-market/virtuoso/vm"
)

// ExtraConfig keys of the VNC server built into ESXi up to 6.x.
const (
	keyVNCEnabled  = "RemoteDisplay.vnc.enabled"
	keyVNCPort     = "RemoteDisplay.vnc.port"
	keyVNCPassword = "RemoteDisplay.vnc.password"
)

// OpenConsole enables the running VM's VNC server on the VM's console port (taking a free one
// from ConsolePorts if it has none) with a new one-time password, and returns where to connect.
// Opening again changes the password, which locks out whoever had the previous one.
func (d *Driver) OpenConsole(ctx context.Context, id vm.ID) (vm.Console, error) {
	v, state, err := d.findState(ctx, id)
	if err != nil {
		return vm.Console{}, fmt.Errorf("open console of vm %s: %w", id, err)
	}
	if state != types.VirtualMachinePowerStatePoweredOn {
		return vm.Console{}, fmt.Errorf("open console of vm %s: %w", id, vm.ErrNotRunning)
	}
	port, fresh, err := d.consoles.acquire(id)
	if err != nil {
		return vm.Console{}, err
	}
	password := rand.Text()[:8] // VNC uses the first 8 bytes of a password
	task, err := v.Reconfigure(ctx, types.VirtualMachineConfigSpec{ExtraConfig: []types.BaseOptionValue{
		&types.OptionValue{Key: keyVNCEnabled, Value: "true"},
		&types.OptionValue{Key: keyVNCPort, Value: strconv.Itoa(port)},
		&types.OptionValue{Key: keyVNCPassword, Value: password},
	}})
	if _, err := runTask(ctx, "enable vnc", task, err); err != nil {
		if fresh {
			d.consoles.release(id)
		}
		return vm.Console{}, fmt.Errorf("open console of vm %s: %w", id, err)
	}
	d.log.Info("opened console", "vm", id, "port", port)
	return vm.Console{Addr: net.JoinHostPort(d.cfg.ConsoleHost, strconv.Itoa(port)), Password: password}, nil
}

// CloseConsole disables the VM's VNC server, clears its password and frees its port.
func (d *Driver) CloseConsole(ctx context.Context, id vm.ID) error {
	v, err := d.find(ctx, id)
	if err != nil {
		return fmt.Errorf("close console of vm %s: %w", id, err)
	}
	if err := d.endConsole(ctx, id, v); err != nil {
		return fmt.Errorf("close console of vm %s: %w", id, err)
	}
	return nil
}

// endConsole disables the VNC server if it is on and frees the port. Stop and Suspend call it
// too, so that a one-time password never outlives the run it was made for.
func (d *Driver) endConsole(ctx context.Context, id vm.ID, v *object.VirtualMachine) error {
	m, err := d.props(ctx, v, "config.extraConfig")
	if err != nil {
		return err
	}
	if m.Config != nil && extraConfig(m.Config.ExtraConfig)[keyVNCEnabled] == "true" {
		task, err := v.Reconfigure(ctx, types.VirtualMachineConfigSpec{ExtraConfig: []types.BaseOptionValue{
			&types.OptionValue{Key: keyVNCEnabled, Value: "false"},
			&types.OptionValue{Key: keyVNCPassword, Value: ""}, // an empty value removes the key
		}})
		if _, err := runTask(ctx, "disable vnc", task, err); err != nil {
			return err
		}
		d.log.Info("closed console", "vm", id)
	}
	d.consoles.release(id)
	return nil
}

// WebMKSTicket is a one-time ticket for the browser console of ESXi 7 and later, which have no
// VNC server: a WebMKS client connects to URL.
type WebMKSTicket struct {
	URL    string `json:"url"` // wss://host:port/ticket/<ticket>
	Ticket string `json:"ticket"`
	Host   string `json:"host"`
	Port   int    `json:"port"`
	// SSLThumbprint of the host's certificate, for clients that pin it.
	SSLThumbprint string `json:"ssl_thumbprint,omitempty"`
}

// WebMKS acquires a WebMKS ticket for the running VM (not part of vm.Driver: a console
// capability of this driver only).
func (d *Driver) WebMKS(ctx context.Context, id vm.ID) (WebMKSTicket, error) {
	v, state, err := d.findState(ctx, id)
	if err != nil {
		return WebMKSTicket{}, fmt.Errorf("webmks ticket for vm %s: %w", id, err)
	}
	if state != types.VirtualMachinePowerStatePoweredOn {
		return WebMKSTicket{}, fmt.Errorf("webmks ticket for vm %s: %w", id, vm.ErrNotRunning)
	}
	t, err := v.AcquireTicket(ctx, "webmks")
	if err != nil {
		return WebMKSTicket{}, fmt.Errorf("webmks ticket for vm %s: %w: %w", id, vm.ErrHypervisor, err)
	}
	host := t.Host
	if host == "" {
		host = d.cfg.URL.Hostname()
	}
	port := int(t.Port)
	if port == 0 {
		port = 443
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	return WebMKSTicket{
		URL:           "wss://" + addr + "/ticket/" + t.Ticket,
		Ticket:        t.Ticket,
		Host:          host,
		Port:          port,
		SSLThumbprint: t.SslThumbprint,
	}, nil
}
