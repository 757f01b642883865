package vsphere

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"
)

// Config says where the driver finds vSphere and how it behaves. Inventory names may be left
// empty where vSphere has only one candidate (one datacenter, one datastore...); with a vCenter
// of several clusters, name the resource pool, e.g. "/DC0/host/Cluster0/Resources".
type Config struct {
	// URL of the SDK endpoint with credentials: https://user:password@host/sdk.
	URL *url.URL
	// Insecure skips TLS certificate verification (self-signed ESXi certificates).
	Insecure bool

	Datacenter   string // datacenter name or path; empty: the only one
	Datastore    string // datastore for VM directories; empty: the only one
	ResourcePool string // inventory path of the pool VMs run in; empty: the only one
	Folder       string // VM folder; empty: the datacenter's root VM folder
	Network      string // network of the VMs' NIC; empty: "VM Network"

	// NamePrefix is put before the VM ID to name VMs and their directories.
	NamePrefix string

	// SuspendAttempts is how often Suspend asks before it gives up (report: 100).
	SuspendAttempts int
	// SuspendRetryDelay is the pause between two suspend attempts.
	SuspendRetryDelay time.Duration
	// StopTimeout is how long Stop waits for a guest with VMware Tools to shut down before it
	// powers the VM off.
	StopTimeout time.Duration
	// PollInterval is how often a running power operation is checked for a pending question.
	PollInterval time.Duration

	// ConsoleHost is the address buyers' consoles connect to; empty: the host of URL.
	ConsoleHost string
	// ConsolePorts is the range of VNC ports handed out, first and last included.
	ConsolePorts [2]int

	// Logger receives what the driver does; nil discards it.
	Logger *slog.Logger
}

// Default returns a Config with every behaviour setting filled in; URL and inventory are left
// to the caller.
func Default() Config {
	var c Config
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	if c.NamePrefix == "" {
		c.NamePrefix = "virtuoso-"
	}
	if c.Network == "" {
		c.Network = "VM Network"
	}
	if c.SuspendAttempts == 0 {
		c.SuspendAttempts = 100
	}
	if c.SuspendRetryDelay == 0 {
		c.SuspendRetryDelay = time.Second
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = time.Minute
	}
	if c.PollInterval == 0 {
		c.PollInterval = 250 * time.Millisecond
	}
	if c.ConsolePorts == [2]int{} {
		c.ConsolePorts = [2]int{5900, 5999}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports settings that cannot work.
func (c Config) Validate() error {
	var errs []error
	if c.URL == nil || c.URL.Host == "" {
		errs = append(errs, errors.New("url: want https://user:password@host/sdk"))
	}
	if c.SuspendAttempts < 1 {
		errs = append(errs, fmt.Errorf("suspend attempts %d: want at least 1", c.SuspendAttempts))
	}
	if c.SuspendRetryDelay < 0 || c.StopTimeout < 0 || c.PollInterval <= 0 {
		errs = append(errs, errors.New("durations must not be negative, poll interval must be positive"))
	}
	if lo, hi := c.ConsolePorts[0], c.ConsolePorts[1]; lo < 1 || hi > 65535 || lo > hi {
		errs = append(errs, fmt.Errorf("console ports %d-%d: want a range within 1-65535", lo, hi))
	}
	if len(c.NamePrefix) > 40 {
		errs = append(errs, errors.New("name prefix longer than 40 characters"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vsphere config: %w", err)
	}
	return nil
}
